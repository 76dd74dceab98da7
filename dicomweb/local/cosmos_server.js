// Starts the Cosmos DB protocol server (@vercel/cosmosdb-server) with HTTP keep-alive (its own CLI
// closes every connection, which costs ~25 ms per call), answering as Cosmos DB does where that server
// does not, so that what fails in Azure fails here too:
// - 404 NotFound where it fails with a 500: a point read of a missing document, and any document
//   operation in a database or container that does not exist (substatus 1003, "owner resource does not
//   exist"). The server keeps nothing on disk: after a restart the local stack provisions the database
//   and container again (dicomweb/local/emulators.py); the service never creates them.
// - 413 RequestEntityTooLarge for an item above 2 MB, measured as Cosmos DB measures it, the UTF-8
//   length of its JSON ("Azure Cosmos DB service quotas", per-item limits): on create, upsert, replace,
//   and for the document a patch would produce. (A patch of more than 10 operations is refused with 400
//   by the server itself.)
// - A transactional batch that is one (the server's keeps the operations before a failed one, has no Patch,
//   and answers 200 whatever happened): Create, Upsert, Read, Replace, Delete and Patch (with its
//   condition), the writes honouring ifMatch, all applied or none. A failed batch answers 207 Multi-Status,
//   the failed operation with its own status and every other with 424 FailedDependency, which the SDK
//   raises as CosmosBatchOperationError. More than 100 operations is a 400 and a body above the server's
//   2,202,010 bytes a 413, both with nothing applied; an item above 2 MB, or of another partition than the
//   batch's (400, substatus 1001), fails its operation and so the batch.
// - With --throttle FRACTION, that fraction of document requests answered 429 TooManyRequests with
//   x-ms-retry-after-ms (--retry-after-ms, default 100) and substatus 3200, as Cosmos DB answers when a
//   partition has used its request units, so the service's handling of throttling is exercised.
// - A conditional patch evaluates its condition on its one document, case kept.
// - On SIGUSR2 it prints how many document requests it has answered ("document requests: N"), so that a
//   benchmark can tell the calls a workload costs (Emulators.cosmos_requests()).
// Usage: node cosmos_server.js PORT [HOST] [--throttle FRACTION] [--retry-after-ms MS]
const MAX_ITEM_BYTES = 2 * 1024 * 1024;
const SYSTEM_PROPERTIES = new Set(["_rid", "_self", "_etag", "_ts", "_attachments"]);

const { option } = require("./options");
const throttle = option("--throttle", 0);
const retryAfterMs = option("--retry-after-ms", 100);

// The item size check sits in the store, where every write path (create, upsert, replace, patch, batch) ends.
const Items = require("@vercel/cosmosdb-server/lib/account/items").default;
function checkSize(data) {
  const item = Object.fromEntries(Object.entries(data).filter(([key]) => !SYSTEM_PROPERTIES.has(key)));
  if (Buffer.byteLength(JSON.stringify(item), "utf8") > MAX_ITEM_BYTES) {
    const error = new Error("Request size is too large");
    error.tooLarge = true;
    throw error;
  }
}
for (const method of ["create", "replace"]) {
  const original = Items.prototype[method];
  Items.prototype[method] = function (data, ...rest) {
    checkSize(data);
    return original.call(this, data, ...rest);
  };
}

// A conditional patch's condition, evaluated on the one document as Cosmos DB does (the server runs it as a
// query over the whole container: a full scan per patch, seconds each with 100,000 documents), and with its
// case kept (the server lower-cases it, values included).
const patchOperations = require("@vercel/cosmosdb-server/lib/handler/_patch-operations");
const { parsePartitionKey } = require("@vercel/cosmosdb-server/lib/utils/get-partition-from-header");
const patchWithoutCondition = patchOperations.patchOperation;
function patchOperation(collection, input) {
  if (!input.condition) return patchWithoutCondition(collection, input);
  const data = collection.document(input.id, parsePartitionKey(input.partitionKey, input.id)).read();
  const where = input.condition.trim().replace(/^from\s+c\s+where\s+/i, "");
  if (data) {
    let held;
    try {
      const documents = collection.documents;
      held = documents._getQuery(`SELECT * FROM c WHERE (${where})`)
        .exec([data], { parameters: [], udf: documents._userDefinedFunctions() }).result.length > 0;
    } catch (error) {
      return { statusCode: 400, body: { code: "BadRequest", message: "Invalid condition in patch request." } };
    }
    if (!held) {
      return { statusCode: 412, body: { code: "PreconditionFailed",
        message: "Condition specified in the patch request is not satisfied." } };
    }
  }
  return patchWithoutCondition(collection, { ...input, condition: undefined });
}
patchOperations.patchOperation = patchOperation;

// The transactional batch. Each document an operation may change is kept as it was before its first change
// (the stored object, or its absence) so that a failed batch can put it back with the same _etag and _rid.
// Everything after the body is read runs synchronously: no other request sees a batch half applied.
const documentOperations = require("@vercel/cosmosdb-server/lib/handler/_document-operations");
const MAX_BATCH_OPERATIONS = 100;
// The server's maxBatchRequestBodySize, as the .NET SDK's BatchConstants copy it; measured here on the JSON.
const MAX_BATCH_BODY_BYTES = 2202010;

function batchPatch(collection, input) {
  const { operations, condition } = input.resourceBody || {};
  if (!Array.isArray(operations)) {
    const message = "Invalid patch request: check syntax of patch specification.";
    return { statusCode: 400, body: { code: "BadRequest", message } };
  }
  return patchOperation(collection, { ...input, operations, condition });
}

const BATCH_OPERATIONS = {
  Create: documentOperations.createOperation,
  Upsert: documentOperations.upsertOperation,
  Read: documentOperations.readOperation,
  Replace: documentOperations.replaceOperation,
  Delete: documentOperations.deleteOperation,
  Patch: batchPatch,
};

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on("data", chunk => chunks.push(chunk));
    req.on("end", () => resolve(Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

// The document a Create, Upsert or Replace writes (a Patch's resourceBody holds its operations).
function writtenDocument(input) {
  return input.operationType === "Patch" ? undefined : input.resourceBody;
}

function badRequest(res, message) {
  res.statusCode = 400;
  return { code: "BadRequest", message };
}

// One operation's result: a write of another partition's document, or of an item above 2 MB, fails that
// operation (as Cosmos DB fails it, 400 substatus 1001 or 413) and so the batch, never the request.
function runBatchOperation(collection, input, partitionValue) {
  const document = writtenDocument(input);
  if (document) {
    const value = collection.documents._getPartition(document);
    if (JSON.stringify(value === undefined ? {} : value) !== JSON.stringify(partitionValue)) {
      return { statusCode: 400, subStatusCode: 1001 };
    }
  }
  try {
    return BATCH_OPERATIONS[input.operationType](collection, input);
  } catch (error) {
    if (!error.tooLarge) throw error;
    return { statusCode: 413 };
  }
}

const batchDocuments = require("@vercel/cosmosdb-server/lib/handler/batch-documents");
batchDocuments.default = async (account, req, res, { dbId, collId }) => {
  const raw = await readBody(req);
  if (raw.length > MAX_BATCH_BODY_BYTES) {
    res.statusCode = 413;
    return { code: "RequestEntityTooLarge", message: "Request size is too large" };
  }
  const partitionKey = req.headers["x-ms-documentdb-partitionkey"];
  let operations;
  let partitionValue;
  try {
    operations = JSON.parse(raw.toString("utf8"));
    const parsed = JSON.parse(partitionKey);
    partitionValue = Array.isArray(parsed) ? parsed[0] : parsed;
  } catch {
    return badRequest(res, "The batch needs a JSON body and a partition key header.");
  }
  if (!Array.isArray(operations)) return badRequest(res, "Invalid request body");
  if (operations.length > MAX_BATCH_OPERATIONS) {
    return badRequest(res, "Batch request has more operations than what is supported.");
  }
  const unknown = operations.find(input => !input || !Object.hasOwn(BATCH_OPERATIONS, input.operationType));
  if (unknown !== undefined) {
    return badRequest(res, `Operation type '${unknown && unknown.operationType}' is not supported in Batch.`);
  }

  const collection = account.database(dbId).collection(collId);
  const before = new Map(); // document id -> its stored document before the batch, or undefined
  const results = [];
  let failed = -1;
  try {
    for (const operation of operations) {
      const input = { ...operation, partitionKey };
      const id = writtenDocument(input) ? writtenDocument(input).id : input.id;
      if (input.operationType !== "Read" && !before.has(id)) {
        before.set(id, collection.document(id, parsePartitionKey(partitionKey, id)).read());
      }
      const result = runBatchOperation(collection, input, partitionValue);
      results.push(result);
      if (result.statusCode >= 400) {
        failed = results.length - 1;
        break;
      }
    }
  } catch (error) {
    rollBack(collection, partitionKey, before);
    throw error;
  }
  if (failed >= 0) {
    rollBack(collection, partitionKey, before);
    res.statusCode = 207;
    return operations.map((_, index) => index === failed
      ? { statusCode: results[index].statusCode, subStatusCode: results[index].subStatusCode, requestCharge: 1 }
      : { statusCode: 424, requestCharge: 0 });
  }
  res.statusCode = 200;
  return results.map(({ statusCode, body }) => ({
    statusCode, requestCharge: 1, eTag: body && body._etag, resourceBody: body,
  }));
};

// Puts every document the batch touched back as it was: the stored object itself, with its _etag and _rid.
// All are taken out before any is put back, so no unique key is indexed to a document about to go.
function rollBack(collection, partitionKey, before) {
  for (const id of before.keys()) {
    const partition = parsePartitionKey(partitionKey, id);
    if (collection.document(id, partition).read()) collection.documents.delete(id, partition);
  }
  for (const document of before.values()) {
    if (document) collection.documents._set(document);
  }
}

function drain(req) {
  return new Promise(resolve => {
    req.on("end", resolve);
    req.on("error", resolve);
    req.resume();
  });
}

const DOCUMENT_HANDLERS = ["read-document", "read-documents", "create-document", "upsert-document",
  "replace-document", "delete-document", "patch-document", "query-documents", "batch-documents"];
let documentRequests = 0;
process.on("SIGUSR2", () => console.log(`document requests: ${documentRequests}`));
for (const name of DOCUMENT_HANDLERS) {
  const handler = require(`@vercel/cosmosdb-server/lib/handler/${name}`);
  const original = handler.default;
  handler.default = async (account, req, res, params) => {
    documentRequests += 1;
    if (throttle > 0 && Math.random() < throttle) {
      await drain(req);
      res.statusCode = 429;
      res.setHeader("x-ms-retry-after-ms", String(retryAfterMs));
      res.setHeader("x-ms-substatus", "3200");
      return { code: "TooManyRequests", message: "Message: {\"Errors\":[\"Request rate is large. More Request Units " +
        "may be needed, so no changes were made. Please retry this request later.\"]}" };
    }
    const database = account.database(params.dbId);
    if (!database.read() || !database.collection(params.collId).read()) {
      await drain(req);
      res.statusCode = 404;
      res.setHeader("x-ms-substatus", "1003");
      return { code: "NotFound", message: "Owner resource does not exist" };
    }
    try {
      return await original(account, req, res, params);
    } catch (error) {
      if (!error.tooLarge) throw error;
      res.statusCode = 413;
      return { code: "RequestEntityTooLarge", message: error.message };
    }
  };
}

const readDocument = require("@vercel/cosmosdb-server/lib/handler/read-document");
const readOriginal = readDocument.default;
readDocument.default = async (account, req, res, params) => {
  try {
    return await readOriginal(account, req, res, params);
  } catch (error) {
    if (!(error instanceof TypeError)) throw error;
    res.statusCode = 404;
    return { code: "NotFound", message: "Entity with the specified id does not exist in the system." };
  }
};

const { createHttpsServer } = require("@vercel/cosmosdb-server");

const port = parseInt(process.argv[2], 10);
const host = process.argv[3] || "127.0.0.1";
const server = createHttpsServer({ keepAlive: true }).listen(port, host, () => {
  console.log(`cosmosdb-server listening on https://${host}:${port}` + (throttle ? ` (throttling ${throttle})` : ""));
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
