// Starts the Cosmos DB protocol server (@vercel/cosmosdb-server) with HTTP keep-alive:
// its own CLI closes every connection, which costs ~25 ms per call.
// Usage: node cosmos_server.js PORT [HOST]
const { createHttpsServer } = require("@vercel/cosmosdb-server");

const port = parseInt(process.argv[2], 10);
const host = process.argv[3] || "127.0.0.1";
const server = createHttpsServer({ keepAlive: true }).listen(port, host, () => {
  console.log(`cosmosdb-server listening on https://${host}:${port}`);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
