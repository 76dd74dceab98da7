// The service: a Python 3.12 Function App on the Flex Consumption plan with HTTP streams, running
// as the user-assigned identity. App settings carry every DICOMWEB_* name the code reads
// (dicomweb/config.py SETTING_NAMES) and no secret: Blob, the job and blob event queues, Cosmos DB,
// the Functions host storage and Application Insights are all reached with the identity. FTP and
// basic-auth publishing are off: deployments authenticate with Entra ID.

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

@description('Queue Event Grid delivers the instance blobs\' tier events to (same connection as the job queue).')
param blobEventsQueue string

@description('Container scanner files are dropped in to be converted.')
param inboxContainer string

@description('Queue Event Grid delivers the inbox\'s BlobCreated events to (same connection as the job queue).')
param inboxQueue string

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

@description('Public DICOMweb base URL when a proxy or custom domain fronts the app; empty: https://<default host name>/v1.')
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

@description('Largest scanner file the inbox converts, in GB (DICOMWEB_INBOX_MAX_GB).')
@minValue(1)
param inboxMaxGB int = 8

@description('What becomes of an inbox file once handled (DICOMWEB_INBOX_SOURCES): move (under done/ or failed/) or delete (a stored one).')
@allowed([
  'move'
  'delete'
])
param inboxSources string = 'move'

@description('Storage list prices per GB and month by access tier, e.g. Hot=0.0184,Cool=0.01,Cold=0.0036,Archive=0.00099.')
param pricesPerGbMonth string

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

@description('HTTP requests one instance serves at once; the platform sends the others to other instances.')
@minValue(1)
@maxValue(1000)
param httpPerInstanceConcurrency int

@description('Instances kept running for the HTTP functions (the "http" group); 0: none.')
@minValue(0)
param alwaysReady int = 0

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: Flex Consumption zone redundancy exists in some regions only; left off so the template deploys in every Flex region
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
  // checkov:skip=CKV_AZURE_222: a public DICOMweb API; every request needs an Entra ID bearer token unless the deployment explicitly waived authentication
  // checkov:skip=CKV_AZURE_17: clients authenticate with OpenID Connect bearer tokens; browser viewers cannot present client certificates
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales from zero on demand; the alwaysReady parameter keeps warm instances
  // checkov:skip=CKV_AZURE_213: health check is not available on the Flex Consumption plan (Azure Functions docs: Premium and Dedicated plans only)
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
        version: '3.12'
      }
      scaleAndConcurrency: {
        alwaysReady: alwaysReady == 0 ? [] : [
          {
            name: 'http'
            instanceCount: alwaysReady
          }
        ]
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
        // Unset, Flex picks a default by instance memory: each tile of a viewer could land on an
        // instance of its own, missing the per-process frame cache, read-ahead and single-flight.
        triggers: {
          http: {
            perInstanceConcurrency: httpPerInstanceConcurrency
          }
        }
      }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      // HTTP/2 to browsers: a viewer fetches many tiles at once over one connection instead of six.
      http20Enabled: true
      // CORS is answered by the app itself (DICOMWEB_CORS_ORIGINS), so platform CORS stays off.
    }
  }
}

// No FTP or Kudu user name and password: azd and the Functions tools deploy with Entra ID.
resource publishingCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = [
  for protocol in ['ftp', 'scm']: {
    parent: app
    name: protocol
    properties: {
      allow: false
    }
  }
]

// The app settings, as a resource of their own: the public base URL default needs the site's default
// host name, which the platform assigns (regional names carry a hash) and is known only once it exists.
resource appSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  // checkov:skip=CKV_AZURE_13: checkov reads every sites/config resource as the site's web configuration; this one holds app settings only (authentication is the app's own OpenID Connect check)
  // checkov:skip=CKV_AZURE_63: checkov reads every sites/config resource as the site's web configuration; this one holds app settings only (logs go to Application Insights)
  // checkov:skip=CKV_AZURE_65: checkov reads every sites/config resource as the site's web configuration; this one holds app settings only (logs go to Application Insights)
  // checkov:skip=CKV_AZURE_66: checkov reads every sites/config resource as the site's web configuration; this one holds app settings only (logs go to Application Insights)
  // checkov:skip=CKV_AZURE_80: checkov reads every sites/config resource as the site's web configuration; this one holds app settings only (a Python app)
  // checkov:skip=CKV_AZURE_88: checkov reads every sites/config resource as the site's web configuration; this one holds app settings only (the app keeps no files: Blob and Cosmos DB hold everything)
  // checkov:skip=CKV_AZURE_222: checkov reads every sites/config resource as the site's web configuration; this one holds app settings only (the site's network access is set, and suppressed with its reason, on the site)
  parent: app
  name: 'appsettings'
  properties: {
    AzureWebJobsStorage__accountName: storageAccountName
    AzureWebJobsStorage__credential: 'managedidentity'
    AzureWebJobsStorage__clientId: identityClientId
    APPLICATIONINSIGHTS_CONNECTION_STRING: appInsightsConnectionString
    APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
    AZURE_CLIENT_ID: identityClientId
    PYTHON_ENABLE_INIT_INDEXING: '1'
    // The host's own cap sits just above ours, so oversized STOW requests get our 413, not its 500.
    FUNCTIONS_REQUEST_BODY_SIZE_LIMIT: string((maxRequestMB + 1) * 1048576)
    DICOMWEB_STORAGE_CONNECTION_STRING: ''
    DICOMWEB_STORAGE_ACCOUNT_URL: storageBlobEndpoint
    DICOMWEB_INSTANCE_CONTAINER: instanceContainer
    DICOMWEB_SIDECAR_CONTAINER: sidecarContainer
    DICOMWEB_STAGING_CONTAINER: stagingContainer
    // The job queue's connection, identity-based: the queue trigger and the service's sender both read it.
    // (DICOMWEB_QUEUES itself, a connection string, is for local use only.)
    DICOMWEB_QUEUES__queueServiceUri: storageQueueEndpoint
    DICOMWEB_QUEUES__credential: 'managedidentity'
    DICOMWEB_QUEUES__clientId: identityClientId
    DICOMWEB_JOBS_QUEUE: jobsQueue
    // Event Grid's tier events for the instance blobs (events.bicep), read through the same connection.
    DICOMWEB_BLOB_EVENTS_QUEUE: blobEventsQueue
    // The inbox: its scanner files' BlobCreated events (inbox.bicep), read through the same connection.
    DICOMWEB_INBOX_CONTAINER: inboxContainer
    DICOMWEB_INBOX_QUEUE: inboxQueue
    DICOMWEB_INBOX_MAX_GB: string(inboxMaxGB)
    DICOMWEB_INBOX_SOURCES: inboxSources
    DICOMWEB_COSMOS_CONNECTION_STRING: ''
    DICOMWEB_COSMOS_ENDPOINT: cosmosEndpoint
    DICOMWEB_COSMOS_DATABASE: cosmosDatabase
    DICOMWEB_COSMOS_CONTAINER: cosmosContainer
    // RetrieveURL and BulkDataURI name this base, not whatever Host and scheme reach the worker behind the
    // platform's front ends.
    DICOMWEB_PUBLIC_BASE_URL: empty(publicBaseUrl) ? 'https://${app.properties.defaultHostName}/v1' : publicBaseUrl
    DICOMWEB_TRUSTED_PROXIES: trustedProxies
    DICOMWEB_CORS_ORIGINS: corsOrigins
    DICOMWEB_AUTH_ISSUER: authIssuer
    DICOMWEB_AUTH_AUDIENCE: authAudience
    DICOMWEB_AUTH_DISABLED: authDisabled ? 'true' : 'false'
    DICOMWEB_READER_ROLES: readerRoles
    DICOMWEB_WRITER_ROLES: writerRoles
    DICOMWEB_OWNER_ROLES: ownerRoles
    DICOMWEB_BLOCK_SIZE_MB: '8'
    DICOMWEB_UPLOAD_CONCURRENCY: '4'
    DICOMWEB_MAX_HEADER_MB: '64'
    DICOMWEB_FRAME_INDEX_CACHE_MB: '64'
    DICOMWEB_FRAME_CACHE_MB: '64'
    DICOMWEB_FRAME_CACHE_SECONDS: '30'
    DICOMWEB_METADATA_CACHE_MB: '48'
    DICOMWEB_MAX_REQUEST_MB: string(maxRequestMB)
    DICOMWEB_UPLOAD_SAS_SECONDS: '900'
    DICOMWEB_UPLOAD_SESSION_SECONDS: '86400'
    DICOMWEB_COMMIT_WAIT_SECONDS: '200'
    DICOMWEB_HOT_PIN_MB: string(hotPinMB)
    DICOMWEB_PRICES_PER_GB_MONTH: pricesPerGbMonth
    DICOMWEB_CHANGEFEED_GAP_SECONDS: '10'
    DICOMWEB_MAX_FRAMES_PER_REQUEST: '1000'
    DICOMWEB_STORAGE_TIMEOUT_SECONDS: '20'
    DICOMWEB_MAX_ELEMENTS: '2000000'
    DICOMWEB_MAX_SEQUENCE_DEPTH: '32'
    DICOMWEB_MAX_FRAMES: '1000000'
    DICOMWEB_MAX_PARTS_PER_REQUEST: '1000'
    DICOMWEB_MAX_INLINE_BINARY_KB: '256'
    DICOMWEB_MAX_RENDERED_PIXELS: '16777216'
    DICOMWEB_MAX_RENDERED_FRAMES: '1024'
  }
}

output name string = app.name
output defaultHostName string = app.properties.defaultHostName
