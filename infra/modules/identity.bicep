// The app's user-assigned managed identity: every data-plane call (Blob, Cosmos DB, Application
// Insights) authenticates with it, so no key or connection string exists anywhere.

@description('Name of the identity.')
param name string

@description('Azure region.')
param location string

@description('Tags of every resource.')
param tags object

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
