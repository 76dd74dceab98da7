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
// - With --throttle FRACTION, that fraction of document requests answered 429 TooManyRequests with
//   x-ms-retry-after-ms (--retry-after-ms, default 100) and substatus 3200, as Cosmos DB answers when a
//   partition has used its request units, so the service's handling of throttling is exercised.
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

function drain(req) {
  return new Promise(resolve => {
    req.on("end", resolve);
    req.on("error", resolve);
    req.resume();
  });
}

const DOCUMENT_HANDLERS = ["read-document", "read-documents", "create-document", "upsert-document",
  "replace-document", "delete-document", "patch-document", "query-documents", "batch-documents"];
for (const name of DOCUMENT_HANDLERS) {
  const handler = require(`@vercel/cosmosdb-server/lib/handler/${name}`);
  const original = handler.default;
  handler.default = async (account, req, res, params) => {
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
