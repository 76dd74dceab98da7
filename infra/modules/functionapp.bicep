// The service: a Python 3.11 Function App on the Flex Consumption plan with HTTP streams, running
// as the user-assigned identity. App settings carry every DICOMWEB_* name the code reads
// (dicomweb/config.py SETTING_NAMES) and no secret: Blob, the job queue, Cosmos DB, the Functions host
// storage and Application Insights are all reached with the identity.

@description('Function App name.')
param name string

@description('Azure region.')
param location string

@description('Tags of every resource.')
param tags object

@description('Resource id of the app identity.')
param identityId string

@description('Client id of the app identity (DefaultAzureCredential and the host pick it by this).')
param identityClientId string

@description('Storage account of the DICOM data, also the Functions host storage.')
param storageAccountName string

@description('Blob endpoint of that account.')
param storageBlobEndpoint string

@description('Queue endpoint of that account (the job queue\'s trigger connects to it with the identity).')
param storageQueueEndpoint string

@description('Queue of the background jobs.')
param jobsQueue string

@description('Container Flex Consumption deploys the app package from.')
param deploymentContainer string

@description('Container of the Part 10 files.')
param instanceContainer string

@description('Container of the metadata and frame offset sidecars.')
param sidecarContainer string

@description('Container of the upload sessions.')
param stagingContainer string

@description('Cosmos DB endpoint.')
param cosmosEndpoint string

@description('Cosmos DB database.')
param cosmosDatabase string

@description('Cosmos DB index container.')
param cosmosContainer string

@description('Application Insights connection string (ingestion needs the identity: local auth is off).')
param appInsightsConnectionString string

@description('Origins allowed to call the API from a browser (comma-separated; empty: none).')
param corsOrigins string

@description('Public DICOMweb base URL when a proxy or custom domain fronts the app; empty: taken from each request.')
param publicBaseUrl string

@description('Proxies whose Forwarded / X-Forwarded-* headers are believed (comma-separated addresses or CIDR ranges).')
param trustedProxies string

@description('OpenID Connect issuer whose bearer tokens the API requires (empty: only with authDisabled).')
param authIssuer string

@description('Accepted token audiences, comma-separated (the API app registration\'s client id or api:// URI).')
param authAudience string

@description('True only when the deployment explicitly waived authentication (main.bicep decides).')
param authDisabled bool

@description('App roles or scopes granting read, comma-separated.')
param readerRoles string

@description('App roles or scopes granting write, comma-separated.')
param writerRoles string

@description('App roles or scopes granting everything, delete included, comma-separated.')
param ownerRoles string

@description('Largest STOW-RS request body in MB; larger instances go through upload sessions.')
param maxRequestMB int

@description('Instances at most this size (and labels, overviews, thumbnails) are pinned to the hot tier.')
param hotPinMB int

@description('Memory of one instance in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int

@description('Most instances the app scales out to.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: 'plan-${name}'
  location: location
  tags: tags
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
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': 'api'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storageBlobEndpoint}${deploymentContainer}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      // HTTP/2 to browsers: a viewer fetches many tiles at once over one connection instead of six.
      http20Enabled: true
      // CORS is answered by the app itself (DICOMWEB_CORS_ORIGINS), so platform CORS stays off.
      appSettings: [
        { name: 'AzureWebJobsStorage__accountName', value: storageAccountName }
        { name: 'AzureWebJobsStorage__credential', value: 'managedidentity' }
        { name: 'AzureWebJobsStorage__clientId', value: identityClientId }
        { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: appInsightsConnectionString }
        { name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING', value: 'ClientId=${identityClientId};Authorization=AAD' }
        { name: 'AZURE_CLIENT_ID', value: identityClientId }
        { name: 'PYTHON_ENABLE_INIT_INDEXING', value: '1' }
        // The host's own cap sits just above ours, so oversized STOW requests get our 413, not its 500.
        { name: 'FUNCTIONS_REQUEST_BODY_SIZE_LIMIT', value: string((maxRequestMB + 1) * 1048576) }
        { name: 'DICOMWEB_STORAGE_CONNECTION_STRING', value: '' }
        { name: 'DICOMWEB_STORAGE_ACCOUNT_URL', value: storageBlobEndpoint }
        { name: 'DICOMWEB_INSTANCE_CONTAINER', value: instanceContainer }
        { name: 'DICOMWEB_SIDECAR_CONTAINER', value: sidecarContainer }
        { name: 'DICOMWEB_STAGING_CONTAINER', value: stagingContainer }
        // The job queue's connection, identity-based: the queue trigger and the service's sender both read it.
        // (DICOMWEB_QUEUES itself, a connection string, is for local use only.)
        { name: 'DICOMWEB_QUEUES__queueServiceUri', value: storageQueueEndpoint }
        { name: 'DICOMWEB_QUEUES__credential', value: 'managedidentity' }
        { name: 'DICOMWEB_QUEUES__clientId', value: identityClientId }
        { name: 'DICOMWEB_JOBS_QUEUE', value: jobsQueue }
        { name: 'DICOMWEB_COSMOS_CONNECTION_STRING', value: '' }
        { name: 'DICOMWEB_COSMOS_ENDPOINT', value: cosmosEndpoint }
        { name: 'DICOMWEB_COSMOS_DATABASE', value: cosmosDatabase }
        { name: 'DICOMWEB_COSMOS_CONTAINER', value: cosmosContainer }
        { name: 'DICOMWEB_PUBLIC_BASE_URL', value: publicBaseUrl }
        { name: 'DICOMWEB_TRUSTED_PROXIES', value: trustedProxies }
        { name: 'DICOMWEB_CORS_ORIGINS', value: corsOrigins }
        { name: 'DICOMWEB_AUTH_ISSUER', value: authIssuer }
        { name: 'DICOMWEB_AUTH_AUDIENCE', value: authAudience }
        { name: 'DICOMWEB_AUTH_DISABLED', value: authDisabled ? 'true' : 'false' }
        { name: 'DICOMWEB_READER_ROLES', value: readerRoles }
        { name: 'DICOMWEB_WRITER_ROLES', value: writerRoles }
        { name: 'DICOMWEB_OWNER_ROLES', value: ownerRoles }
        { name: 'DICOMWEB_BLOCK_SIZE_MB', value: '8' }
        { name: 'DICOMWEB_UPLOAD_CONCURRENCY', value: '4' }
        { name: 'DICOMWEB_MAX_HEADER_MB', value: '64' }
        { name: 'DICOMWEB_FRAME_INDEX_CACHE_MB', value: '64' }
        { name: 'DICOMWEB_FRAME_CACHE_MB', value: '64' }
        { name: 'DICOMWEB_FRAME_CACHE_SECONDS', value: '30' }
        { name: 'DICOMWEB_METADATA_CACHE_MB', value: '48' }
        { name: 'DICOMWEB_MAX_REQUEST_MB', value: string(maxRequestMB) }
        { name: 'DICOMWEB_UPLOAD_SAS_SECONDS', value: '900' }
        { name: 'DICOMWEB_UPLOAD_SESSION_SECONDS', value: '86400' }
        { name: 'DICOMWEB_COMMIT_WAIT_SECONDS', value: '200' }
        { name: 'DICOMWEB_HOT_PIN_MB', value: string(hotPinMB) }
        { name: 'DICOMWEB_CHANGEFEED_GAP_SECONDS', value: '10' }
        { name: 'DICOMWEB_MAX_FRAMES_PER_REQUEST', value: '1000' }
        { name: 'DICOMWEB_STORAGE_TIMEOUT_SECONDS', value: '20' }
        { name: 'DICOMWEB_MAX_ELEMENTS', value: '2000000' }
        { name: 'DICOMWEB_MAX_SEQUENCE_DEPTH', value: '32' }
        { name: 'DICOMWEB_MAX_FRAMES', value: '1000000' }
        { name: 'DICOMWEB_MAX_PARTS_PER_REQUEST', value: '1000' }
        { name: 'DICOMWEB_MAX_INLINE_BINARY_KB', value: '256' }
        { name: 'DICOMWEB_MAX_RENDERED_PIXELS', value: '16777216' }
        { name: 'DICOMWEB_MAX_RENDERED_FRAMES', value: '1024' }
      ]
    }
  }
}

output name string = app.name
output defaultHostName string = app.properties.defaultHostName
