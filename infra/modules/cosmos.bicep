// The search index: Cosmos DB for NoSQL with local (key) auth disabled, one database and the index
// container with the partition key and indexing policy the QIDO code needs (the same JSON file the
// code creates locally), and data-plane RBAC for the app and, optionally, a developer.

@description('Cosmos DB account name (3-44 lower-case letters, digits and hyphens).')
param name string

@description('Azure region.')
param location string

@description('Tags of every resource.')
param tags object

@description('Database name.')
param databaseName string

@description('Index container name.')
param containerName string

@description('Serverless (pay per request) or provisioned autoscale throughput.')
param serverless bool = true

@description('Autoscale maximum RU/s of the database when not serverless.')
param autoscaleMaxThroughput int = 4000

@description('Principal id of the app identity.')
param identityPrincipalId string

@description('Optional developer principal to grant the same data access to.')
param principalId string = ''

// Cosmos DB Built-in Data Contributor (a data-plane role, assigned with sqlRoleAssignments).
var dataContributor = '00000000-0000-0000-0000-000000000002'

resource account 'Microsoft.DocumentDB/databaseAccounts@2024-05-15' = {
  // checkov:skip=CKV_AZURE_101: the Flex Consumption app runs without a virtual network and reaches Cosmos DB over its public endpoint; keys are disabled, so only Entra identities with the data role get in (a private endpoint needs the app on a virtual network: see the README)
  // checkov:skip=CKV_AZURE_99: same reason as CKV_AZURE_101: no IP or virtual network filter, access is by Entra identity only
  name: name
  location: location
  tags: tags
  kind: 'GlobalDocumentDB'
  properties: {
    databaseAccountOfferType: 'Standard'
    disableLocalAuth: true
    disableKeyBasedMetadataWriteAccess: true
    minimalTlsVersion: 'Tls12'
    // Reachable from the internet (the app has no virtual network); only Entra identities get in.
    publicNetworkAccess: 'Enabled'
    isVirtualNetworkFilterEnabled: false
    capabilities: serverless ? [
      {
        name: 'EnableServerless'
      }
    ] : []
    locations: [
      {
        locationName: location
        failoverPriority: 0
        isZoneRedundant: false
      }
    ]
    consistencyPolicy: {
      defaultConsistencyLevel: 'Session'
    }
  }
}

resource database 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases@2024-05-15' = {
  parent: account
  name: databaseName
  properties: {
    resource: {
      id: databaseName
    }
    options: serverless ? {} : {
      autoscaleSettings: {
        maxThroughput: autoscaleMaxThroughput
      }
    }
  }
}

resource index 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-05-15' = {
  parent: database
  name: containerName
  properties: {
    resource: {
      id: containerName
      partitionKey: {
        paths: [
          '/studyInstanceUID'
        ]
        kind: 'Hash'
      }
      // The policy the code creates locally (dicomweb/storage/index.py), deployed as-is.
      indexingPolicy: loadJsonContent('../../dicomweb/storage/indexing-policy.json')
    }
  }
}

resource appAccess 'Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments@2024-05-15' = {
  parent: account
  name: guid(account.id, identityPrincipalId, dataContributor)
  properties: {
    principalId: identityPrincipalId
    roleDefinitionId: '${account.id}/sqlRoleDefinitions/${dataContributor}'
    scope: account.id
  }
}

resource developerAccess 'Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments@2024-05-15' = if (!empty(principalId)) {
  parent: account
  name: guid(account.id, principalId, dataContributor)
  properties: {
    principalId: principalId
    roleDefinitionId: '${account.id}/sqlRoleDefinitions/${dataContributor}'
    scope: account.id
  }
}

output endpoint string = account.properties.documentEndpoint
output databaseName string = database.name
output containerName string = index.name
