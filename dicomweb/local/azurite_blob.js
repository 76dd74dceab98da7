// Starts Azurite's Blob service with the Archive tier behaving as in Azure Storage, where Azurite is
// more lenient ("Archive access tier", "Blob rehydration from the archive tier"):
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
// Usage: node azurite_blob.js [--rehydrateSeconds SECONDS] [--latencyMs MS] AZURITE-BLOB-ARGUMENTS...
const http = require("http");
const Models = require("azurite/dist/src/blob/generated/artifacts/models");
const StorageErrorFactory = require("azurite/dist/src/blob/errors/StorageErrorFactory").default;
const StorageError = require("azurite/dist/src/blob/errors/StorageError").default;
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
}

function schedule(store, doc) {
  const { due } = doc.pendingRehydration;
  const key = [doc.accountName, doc.containerName, doc.name];
  setTimeout(() => complete(store, ...key, due), Math.max(0, due - Date.now())).unref();
}

function begin(store, doc, tier, rehydratePriority, copy) {
  doc.properties.accessTier = Archive;
  doc.properties.archiveStatus = PENDING[tier];
  doc.properties.rehydratePriority = rehydratePriority;
  doc.pendingRehydration = { tier, due: Date.now() + rehydrateMs, copy };
  if (copy) {
    doc.properties.copyStatus = Models.CopyStatusType.Pending;
    doc.properties.copyProgress = `0/${doc.properties.contentLength}`;
    doc.properties.copyCompletionTime = undefined;
  }
  blobs(store).update(doc);
  schedule(store, doc);
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

const commitBlockList = Store.prototype.commitBlockList;
Store.prototype.commitBlockList = async function (context, blob, ...rest) {
  refuseArchived(this, context, blob.accountName, blob.containerName, blob.name);
  return commitBlockList.call(this, context, blob, ...rest);
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
  const archived = doc && doc.properties.accessTier === Archive;
  const status = await setTier.call(this, context, account, container, blob, tier, ...rest);
  if (archived && target && rehydrateMs > 0) {
    begin(this, find(this, account, container, blob), target, priority(context), false);
  }
  return status;
};

const startCopyFromURL = Store.prototype.startCopyFromURL;
Store.prototype.startCopyFromURL = async function (context, source, destination, copySource, metadata, tier,
  ...rest) {
  const from = find(this, source.account, source.container, source.blob);
  const archived = from && (source.snapshot || "") === "" && from.properties.accessTier === Archive;
  const properties = await startCopyFromURL.call(this, context, source, destination, copySource, metadata, tier,
    ...rest);
  const target = ONLINE[String(tier).toLowerCase()];
  if (archived && target && rehydrateMs > 0) {
    begin(this, find(this, destination.account, destination.container, destination.blob), target,
      priority(context), true);
  }
  return properties;
};

require("azurite/dist/src/blob/main.js");
