// Starts the Cosmos DB protocol server (@vercel/cosmosdb-server) with HTTP keep-alive:
// its own CLI closes every connection, which costs ~25 ms per call.
// It also bridges two gaps of that server, where it fails with a 500 and Cosmos DB answers
// 404 NotFound, so the service works against it as it does in Azure:
// - a point read of a missing document (the service reads documents by id);
// - any document operation in a database or container that does not exist (the service
//   makes them again when the account comes back empty).
// Usage: node cosmos_server.js PORT [HOST]
const DOCUMENT_HANDLERS = ["read-document", "read-documents", "create-document", "upsert-document",
  "replace-document", "delete-document", "patch-document", "query-documents", "batch-documents"];
for (const name of DOCUMENT_HANDLERS) {
  const handler = require(`@vercel/cosmosdb-server/lib/handler/${name}`);
  const original = handler.default;
  handler.default = (account, req, res, params) => {
    const database = account.database(params.dbId);
    if (!database.read() || !database.collection(params.collId).read()) {
      res.statusCode = 404;
      return { code: "NotFound", message: "Owner resource does not exist" };
    }
    return original(account, req, res, params);
  };
}
const readDocument = require("@vercel/cosmosdb-server/lib/handler/read-document");

const original = readDocument.default;
readDocument.default = (account, req, res, params) => {
  try {
    return original(account, req, res, params);
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
  console.log(`cosmosdb-server listening on https://${host}:${port}`);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
