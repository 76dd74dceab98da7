// Starts Azurite's Blob service behaving as Azure Storage does where Azurite is more lenient or lacks a feature.
//
// The Archive tier ("Archive access tier", "Blob rehydration from the archive tier"):
// - An Archive blob is offline: besides reads (which Azurite refuses already), Set Blob Metadata,
//   Set Blob Properties, Put Block List and Snapshot Blob answer 409 BlobArchived (Azurite accepted them,
//   and a Put Block List even replaced the archived blob). Delete, Copy (as a rehydration source), Get
//   Properties / Metadata / Tags, Set Tags, Set Tier and List stay allowed.
// - Rehydration takes time. Set Blob Tier from Archive to Hot, Cool or Cold leaves the blob in Archive
//   with x-ms-archive-status rehydrate-pending-to-<tier> and x-ms-rehydrate-priority for
//   --rehydrateSeconds (0: instant, as Azurite does), then moves it to the tier. Meanwhile it cannot be
//   read, and Set Blob Tier to another tier answers 409 BlobBeingRehydrated (to the same one, it may raise
//   the priority). Copy Blob from an archived source with x-ms-access-tier makes the destination likewise
//   pending (x-ms-copy-status: pending) until the time passes.
// Pending rehydrations live in the blob documents of Azurite's own database (saved with it), so a
// restarted Azurite finishes them on time, or at once when their time passed while it was down. A
// rehydration started less than Azurite's autosave interval (5 s) before a SIGKILL is lost with the
// rest of those seconds' writes.
//
// Last-access tracking (on in Azure, infra/modules/storage.bicep): a blob's last access time is set when it
// is written (Put Blob, Put Block List, Copy Blob) and when it is read (Get Blob), and returned as
// x-ms-last-access-time by Get Blob Properties and Get Blob and as LastAccessTime by List Blobs. Azure
// updates it on the first read in 24 hours only; here every read updates it. Get Properties, List, Set
// Tier, Set Tags and a rehydration leave it as it is, as in Azure.
//
// Blob events, as an Event Grid system topic delivers them to a Storage Queue: with --eventsEndpoint (the
// queue service's account URL) and --eventsSas (an account SAS allowing Add on messages), the events of
// a container whose metadata says dicomweb_events_queue=<queue> are posted to that queue, one Event Grid
// schema event per message, base64-encoded JSON as Event Grid writes them. The metadata stands for the
// event subscription Azure would have (read at the time of each event). Events: BlobCreated (Put Blob,
// Put Block List, Copy Blob once complete), BlobDeleted, BlobTierChanged (a Set Blob Tier that changed
// the tier, or a rehydration in place once complete), AsyncOperationInitiated (a rehydration started,
// in place or by copy). A post that fails is retried a few times, then logged: the blob request never
// waits for it, and Azurite never fails because of it.
//
// Usage: node azurite_blob.js [--rehydrateSeconds SECONDS] [--latencyMs MS] [--eventsEndpoint URL
//   --eventsSas SAS] AZURITE-BLOB-ARGUMENTS...
const http = require("http");
const { randomUUID } = require("crypto");
const Models = require("azurite/dist/src/blob/generated/artifacts/models");
const StorageErrorFactory = require("azurite/dist/src/blob/errors/StorageErrorFactory").default;
const StorageError = require("azurite/dist/src/blob/errors/StorageError").default;
const Operation = require("azurite/dist/src/blob/generated/artifacts/operation").default;
const Store = require("azurite/dist/src/blob/persistence/LokiBlobMetadataStore").default;

const { option } = require("./options");
const rehydrateMs = option("--rehydrateSeconds", 0) * 1000;
// Opt-in: every request waits this long before Azurite sees it, as a request to Blob Storage across the
// network of a region does (Azurite on loopback answers a small ranged read in about 2 ms), so that local
// load tests see the concurrency a worker needs to keep its reads in flight.
const latencyMs = option("--latencyMs", 0);
if (latencyMs > 0) {
  const emit = http.Server.prototype.emit;
  http.Server.prototype.emit = function (event, ...args) {
    if (event !== "request") return emit.call(this, event, ...args);
    setTimeout(() => emit.call(this, event, ...args), latencyMs);
    return true;
  };
}

// The text after `name` (removing both from process.argv, so that Azurite does not see them), or "".
function textOption(name) {
  const at = process.argv.indexOf(name);
  if (at < 0) return "";
  const value = process.argv[at + 1] || "";
  process.argv.splice(at, 2);
  return value;
}

// One of Azurite's own options (left in process.argv), or `fallback`.
function azuriteOption(name, fallback) {
  const at = process.argv.indexOf(name);
  return at < 0 ? fallback : process.argv[at + 1];
}

const eventsEndpoint = textOption("--eventsEndpoint").replace(/\/+$/, "");
const eventsSas = textOption("--eventsSas").replace(/^\?/, "");
// Where the events say the blobs are.
const blobEndpoint = `http://${azuriteOption("--blobHost", "127.0.0.1")}:${azuriteOption("--blobPort", "10000")}`;
const EVENTS_METADATA = "dicomweb_events_queue";
const POST_ATTEMPTS = 5;

const { Archive, Hot, Cool, Cold } = Models.AccessTier;
const ONLINE = { hot: Hot, cool: Cool, cold: Cold };
const PENDING = { [Hot]: Models.ArchiveStatus.RehydratePendingToHot, [Cool]: Models.ArchiveStatus.RehydratePendingToCool,
  [Cold]: Models.ArchiveStatus.RehydratePendingToCold };

function blobs(store) {
  return store.db.getCollection(store.BLOBS_COLLECTION);
}

function find(store, account, container, blob) {
  return blobs(store).findOne({ accountName: account, containerName: container, name: blob, snapshot: "" });
}

function refuseArchived(store, context, account, container, blob) {
  const doc = find(store, account, container, blob);
  if (doc && doc.isCommitted && doc.properties.accessTier === Archive) {
    throw StorageErrorFactory.getBlobArchived(context.contextId);
  }
}

function priority(context) {
  const asked = (context.request.getHeader("x-ms-rehydrate-priority") || "").toLowerCase();
  return asked === "high" ? Models.RehydratePriority.High : Models.RehydratePriority.Standard;
}

// The request an event is about: Azurite's request id and the client's.
function requestIds(context) {
  return { requestId: context.contextId, clientRequestId: context.request.getHeader("x-ms-client-request-id") || "" };
}

// The queue a container's events go to (its "event subscription"), or undefined.
function eventsQueue(store, account, container) {
  if (!eventsEndpoint) return undefined;
  const doc = store.db.getCollection(store.CONTAINERS_COLLECTION).findOne({ accountName: account, name: container });
  const metadata = (doc && doc.metadata) || {};
  const key = Object.keys(metadata).find(name => name.toLowerCase() === EVENTS_METADATA);
  return key === undefined ? undefined : metadata[key];
}

// Event Grid's sequencer: opaque, but increasing for one blob (here for all, across restarts too).
let lastMs = 0;
let sequence = 0;
function sequencer() {
  lastMs = Math.max(lastMs, Date.now());
  sequence += 1;
  return lastMs.toString(16).padStart(16, "0") + sequence.toString(16).padStart(16, "0");
}

async function post(queue, event) {
  const text = Buffer.from(JSON.stringify(event), "utf8").toString("base64");
  const url = `${eventsEndpoint}/${encodeURIComponent(queue)}/messages?${eventsSas}`;
  let problem = "";
  for (let attempt = 1; attempt <= POST_ATTEMPTS; attempt++) {
    try {
      const answer = await fetch(url, { method: "POST", headers: { "content-type": "application/xml" },
        body: `<QueueMessage><MessageText>${text}</MessageText></QueueMessage>` });
      if (answer.ok) return;
      const code = /<Code>([^<]*)<\/Code>/.exec(await answer.text());
      problem = `${answer.status} ${code ? code[1] : answer.statusText}`;
    } catch (error) {
      problem = String(error);
    }
    if (attempt < POST_ATTEMPTS) await new Promise(resolve => setTimeout(resolve, 250 * 2 ** attempt).unref());
  }
  console.error(`could not post ${event.eventType} of ${event.subject} to queue ${queue}: ${problem}`);
}

// Posts `eventType`, caused by operation `api`, about the blob `doc` as it is now, if its container subscribes
// to events; never waits.
function publish(store, eventType, api, doc, ids, extra) {
  const queue = eventsQueue(store, doc.accountName, doc.containerName);
  if (!queue) return;
  const path = `${doc.containerName}/${doc.name}`;
  const event = {
    topic: `/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/local/providers/` +
      `Microsoft.Storage/storageAccounts/${doc.accountName}`,
    subject: `/blobServices/default/containers/${doc.containerName}/blobs/${doc.name}`,
    eventType,
    id: randomUUID(),
    eventTime: new Date().toISOString(),
    data: {
      api,
      ...ids,
      ...extra,
      contentType: doc.properties.contentType,
      contentLength: doc.properties.contentLength,
      blobType: doc.properties.blobType,
      url: `${blobEndpoint}/${doc.accountName}/${path.split("/").map(encodeURIComponent).join("/")}`,
      sequencer: sequencer(),
      storageDiagnostics: { batchId: randomUUID() },
    },
    dataVersion: "",
    metadataVersion: "1",
  };
  post(queue, event).catch(error => console.error(`event post failed: ${error}`));
}

function created(store, doc, ids, api) {
  publish(store, "Microsoft.Storage.BlobCreated", api, doc, ids,
    { eTag: doc.properties.etag, accessTier: doc.properties.accessTier });
}

function tierChanged(store, doc, ids, previousTier) {
  publish(store, "Microsoft.Storage.BlobTierChanged", "SetBlobTier", doc, ids,
    { accessTier: doc.properties.accessTier, previousTier });
}

// Sets the blob's last access time to `when` (default: now): a write does, and so does a read.
function accessed(store, doc, when) {
  doc.properties.lastAccessedOn = when || new Date();
  blobs(store).update(doc);
}

// The blob's properties with its last access time under the name of Get Blob's and Get Properties' header.
function withLastAccess(properties) {
  return { ...properties, lastAccessed: properties.lastAccessedOn };
}

// The end of a rehydration: the blob (or rehydrated copy) comes online in its target tier.
function complete(store, account, container, blob, due) {
  const doc = find(store, account, container, blob);
  const pending = doc && doc.pendingRehydration;
  if (!pending || pending.due !== due) return;
  const now = new Date();
  doc.properties.accessTier = pending.tier;
  doc.properties.accessTierChangeTime = now;
  doc.properties.archiveStatus = undefined;
  doc.properties.rehydratePriority = undefined;
  if (pending.copy) {
    doc.properties.copyStatus = Models.CopyStatusType.Success;
    doc.properties.copyProgress = `${doc.properties.contentLength}/${doc.properties.contentLength}`;
    doc.properties.copyCompletionTime = now;
  }
  delete doc.pendingRehydration;
  blobs(store).update(doc);
  if (pending.copy) {
    created(store, doc, pending.ids, "CopyBlob");
  } else {
    tierChanged(store, doc, pending.ids, Archive);
  }
}

function schedule(store, doc) {
  const { due } = doc.pendingRehydration;
  const key = [doc.accountName, doc.containerName, doc.name];
  setTimeout(() => complete(store, ...key, due), Math.max(0, due - Date.now())).unref();
}

function begin(store, context, doc, tier, copy) {
  doc.properties.accessTier = Archive;
  doc.properties.archiveStatus = PENDING[tier];
  doc.properties.rehydratePriority = priority(context);
  doc.pendingRehydration = { tier, due: Date.now() + rehydrateMs, copy, ids: requestIds(context) };
  if (copy) {
    doc.properties.copyStatus = Models.CopyStatusType.Pending;
    doc.properties.copyProgress = `0/${doc.properties.contentLength}`;
    doc.properties.copyCompletionTime = undefined;
  }
  blobs(store).update(doc);
  schedule(store, doc);
  publish(store, "Microsoft.Storage.AsyncOperationInitiated", copy ? "CopyBlob" : "SetBlobTier", doc,
    requestIds(context), {});
}

const init = Store.prototype.init;
Store.prototype.init = async function (...args) {
  await init.apply(this, args);
  for (const doc of blobs(this).where(d => d.pendingRehydration !== undefined)) {
    schedule(this, doc);
  }
};

for (const method of ["setBlobMetadata", "setBlobHTTPHeaders", "createSnapshot"]) {
  const original = Store.prototype[method];
  Store.prototype[method] = async function (context, account, container, blob, ...rest) {
    refuseArchived(this, context, account, container, blob);
    return original.call(this, context, account, container, blob, ...rest);
  };
}

const createBlob = Store.prototype.createBlob;
Store.prototype.createBlob = async function (context, blob, ...rest) {
  blob.properties.lastAccessedOn = blob.properties.lastModified || new Date();
  const result = await createBlob.call(this, context, blob, ...rest);
  created(this, find(this, blob.accountName, blob.containerName, blob.name), requestIds(context), "PutBlob");
  return result;
};

const commitBlockList = Store.prototype.commitBlockList;
Store.prototype.commitBlockList = async function (context, blob, ...rest) {
  refuseArchived(this, context, blob.accountName, blob.containerName, blob.name);
  const result = await commitBlockList.call(this, context, blob, ...rest);
  const doc = find(this, blob.accountName, blob.containerName, blob.name);
  accessed(this, doc, blob.properties.lastModified);
  created(this, doc, requestIds(context), "PutBlockList");
  return result;
};

// Get Blob reads through downloadBlob, and so do some writes (page and append blobs, abort copy) to find the blob.
const downloadBlob = Store.prototype.downloadBlob;
Store.prototype.downloadBlob = async function (context, ...rest) {
  const doc = await downloadBlob.call(this, context, ...rest);
  if (context.operation !== Operation.Blob_Download) return doc;
  if (doc.snapshot === "" && doc.properties.accessTier !== Archive) {
    accessed(this, doc); // Azure: on the first read in 24 hours only
  }
  return { ...doc, properties: withLastAccess(doc.properties) };
};

const getBlobProperties = Store.prototype.getBlobProperties;
Store.prototype.getBlobProperties = async function (...args) {
  const found = await getBlobProperties.apply(this, args);
  return { ...found, properties: withLastAccess(found.properties) };
};

const deleteBlob = Store.prototype.deleteBlob;
Store.prototype.deleteBlob = async function (context, account, container, blob, options) {
  const doc = find(this, account, container, blob);
  await deleteBlob.call(this, context, account, container, blob, options);
  const base = !options.snapshot && options.deleteSnapshots !== Models.DeleteSnapshotsOptionType.Only;
  if (doc && doc.isCommitted && base) {
    publish(this, "Microsoft.Storage.BlobDeleted", "DeleteBlob", doc, requestIds(context), {});
  }
};

const setTier = Store.prototype.setTier;
Store.prototype.setTier = async function (context, account, container, blob, tier, ...rest) {
  const doc = find(this, account, container, blob);
  const target = ONLINE[String(tier).toLowerCase()];
  if (doc && doc.pendingRehydration) {
    if (target !== doc.pendingRehydration.tier) {
      throw new StorageError(409, "BlobBeingRehydrated",
        "This operation is not permitted because the blob is being rehydrated.", context.contextId);
    }
    if (priority(context) === Models.RehydratePriority.High) {
      doc.properties.rehydratePriority = Models.RehydratePriority.High;
      blobs(this).update(doc);
    }
    return 202;
  }
  const previous = doc && doc.properties.accessTier;
  const status = await setTier.call(this, context, account, container, blob, tier, ...rest);
  const changed = find(this, account, container, blob);
  if (previous === Archive && target && rehydrateMs > 0) {
    begin(this, context, changed, target, false);
  } else if (changed.properties.accessTier !== previous) {
    tierChanged(this, changed, requestIds(context), previous);
  }
  return status;
};

for (const method of ["startCopyFromURL", "copyFromURL"]) {
  const original = Store.prototype[method];
  Store.prototype[method] = async function (context, source, destination, copySource, metadata, tier, ...rest) {
    const from = find(this, source.account, source.container, source.blob);
    const archived = from && (source.snapshot || "") === "" && from.properties.accessTier === Archive;
    const properties = await original.call(this, context, source, destination, copySource, metadata, tier, ...rest);
    const doc = find(this, destination.account, destination.container, destination.blob);
    accessed(this, doc, properties.lastModified);
    const target = ONLINE[String(tier).toLowerCase()];
    if (archived && target && rehydrateMs > 0) {
      begin(this, context, doc, target, true);
    } else {
      created(this, doc, requestIds(context), "CopyBlob");
    }
    return properties;
  };
}

require("azurite/dist/src/blob/main.js");
