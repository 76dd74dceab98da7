// Starts the Cosmos DB protocol server (@vercel/cosmosdb-server) with HTTP keep-alive:
// its own CLI closes every connection, which costs ~25 ms per call.
// It also bridges one gap of that server: a point read of a missing document answers
// 404 NotFound, as Cosmos DB does (the server itself fails with a 500), so the service
// reads documents by id the way it does in Azure.
// Usage: node cosmos_server.js PORT [HOST]
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
