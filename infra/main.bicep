// DICOMweb service for digital pathology: the Azure resources the code expects.
// Minimal for now: role assignments, lifecycle rules and monitoring come with the deployment issue.
// The app settings carry every DICOMWEB_* name the code reads (dicomweb/config.py SETTING_NAMES);
// the service reaches Blob and Cosmos with its managed identity, so no setting holds a secret.

targetScope = 'resourceGroup'

@description('Base name for the resources (lower case letters, digits and hyphens).')
param name string = 'dicomweb'

@description('Azure region.')
param location string = resourceGroup().location

@description('Origins allowed to call the API from a browser (comma-separated, * for any).')
param corsOrigins string = '*'

@description('Public DICOMweb base URL when a proxy or custom domain fronts the app; empty: taken from each request.')
param publicBaseUrl string = ''

@description('Largest STOW-RS request body in MB; larger instances go through upload sessions.')
param maxRequestMB int = 100

var suffix = uniqueString(resourceGroup().id, name)
// Defaults of dicomweb/config.py.
var instanceContainer = 'dicom-instances'
var sidecarContainer = 'dicom-sidecars'
var stagingContainer = 'dicom-staging'
var cosmosDatabase = 'dicomweb'
var cosmosContainer = 'index'
// Flex Consumption deploys the app package from this container.
var deploymentContainer = 'app-package'

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${name}-id-${suffix}'
  location: location
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: take('dw${suffix}', 24)
  location: location
  sku: {
    name: 'Standard_LRS'
  }
  kind: 'StorageV2'
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource instances 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: instanceContainer
  properties: {
    publicAccess: 'None'
  }
}

resource sidecars 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: sidecarContainer
  properties: {
    publicAccess: 'None'
  }
}

resource staging 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: stagingContainer
  properties: {
    publicAccess: 'None'
  }
}

resource deployments 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainer
  properties: {
    publicAccess: 'None'
  }
}

resource cosmos 'Microsoft.DocumentDB/databaseAccounts@2024-05-15' = {
  name: '${name}-cosmos-${suffix}'
  location: location
  kind: 'GlobalDocumentDB'
  properties: {
    databaseAccountOfferType: 'Standard'
    disableLocalAuth: true
    capabilities: [
      {
        name: 'EnableServerless'
      }
    ]
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
  parent: cosmos
  name: cosmosDatabase
  properties: {
    resource: {
      id: cosmosDatabase
    }
  }
}

resource indexContainer 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-05-15' = {
  parent: database
  name: cosmosContainer
  properties: {
    resource: {
      id: cosmosContainer
      partitionKey: {
        paths: [
          '/studyInstanceUID'
        ]
        kind: 'Hash'
      }
      // The policy the code creates locally (dicomweb/storage/index.py), deployed as-is.
      indexingPolicy: loadJsonContent('../dicomweb/storage/indexing-policy.json')
    }
  }
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: '${name}-plan-${suffix}'
  location: location
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

resource app 'Microsoft.Web/sites@2024-04-01' = {
  name: '${name}-${suffix}'
  location: location
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deployments.name}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identity.id
          }
        }
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
      scaleAndConcurrency: {
        instanceMemoryMB: 2048
        maximumInstanceCount: 40
      }
    }
    siteConfig: {
      // CORS is answered by the app itself (DICOMWEB_CORS_ORIGINS), so platform CORS stays off.
      appSettings: [
        { name: 'AzureWebJobsStorage__accountName', value: storage.name }
        { name: 'AzureWebJobsStorage__credential', value: 'managedidentity' }
        { name: 'AzureWebJobsStorage__clientId', value: identity.properties.clientId }
        { name: 'AZURE_CLIENT_ID', value: identity.properties.clientId }
        { name: 'PYTHON_ENABLE_INIT_INDEXING', value: '1' }
        { name: 'DICOMWEB_STORAGE_CONNECTION_STRING', value: '' }
        { name: 'DICOMWEB_STORAGE_ACCOUNT_URL', value: storage.properties.primaryEndpoints.blob }
        { name: 'DICOMWEB_INSTANCE_CONTAINER', value: instances.name }
        { name: 'DICOMWEB_SIDECAR_CONTAINER', value: sidecars.name }
        { name: 'DICOMWEB_STAGING_CONTAINER', value: staging.name }
        { name: 'DICOMWEB_COSMOS_CONNECTION_STRING', value: '' }
        { name: 'DICOMWEB_COSMOS_ENDPOINT', value: cosmos.properties.documentEndpoint }
        { name: 'DICOMWEB_COSMOS_DATABASE', value: database.name }
        { name: 'DICOMWEB_COSMOS_CONTAINER', value: indexContainer.name }
        { name: 'DICOMWEB_PUBLIC_BASE_URL', value: publicBaseUrl }
        { name: 'DICOMWEB_CORS_ORIGINS', value: corsOrigins }
        { name: 'DICOMWEB_BLOCK_SIZE_MB', value: '8' }
        { name: 'DICOMWEB_UPLOAD_CONCURRENCY', value: '4' }
        { name: 'DICOMWEB_MAX_HEADER_MB', value: '64' }
        { name: 'DICOMWEB_FRAME_INDEX_CACHE_MB', value: '64' }
        { name: 'DICOMWEB_FRAME_CACHE_MB', value: '64' }
        { name: 'DICOMWEB_FRAME_CACHE_SECONDS', value: '30' }
        { name: 'DICOMWEB_MAX_REQUEST_MB', value: string(maxRequestMB) }
        // The host's own cap sits just above ours, so oversized STOW requests get our 413, not its 500.
        { name: 'FUNCTIONS_REQUEST_BODY_SIZE_LIMIT', value: string((maxRequestMB + 1) * 1048576) }
        { name: 'DICOMWEB_UPLOAD_SAS_SECONDS', value: '900' }
        { name: 'DICOMWEB_UPLOAD_SESSION_SECONDS', value: '86400' }
        { name: 'DICOMWEB_COMMIT_WAIT_SECONDS', value: '200' }
      ]
    }
  }
}

output DICOMWEB_STORAGE_ACCOUNT_URL string = storage.properties.primaryEndpoints.blob
output DICOMWEB_INSTANCE_CONTAINER string = instances.name
output DICOMWEB_SIDECAR_CONTAINER string = sidecars.name
output DICOMWEB_STAGING_CONTAINER string = staging.name
output DICOMWEB_COSMOS_ENDPOINT string = cosmos.properties.documentEndpoint
output DICOMWEB_COSMOS_DATABASE string = database.name
output DICOMWEB_COSMOS_CONTAINER string = indexContainer.name
output AZURE_CLIENT_ID string = identity.properties.clientId
output SERVICE_BASE_URL string = 'https://${app.properties.defaultHostName}/v1'
