// DICOMweb service for digital pathology: everything it runs on in Azure (azd: `azd up`).
// A resource group holding the app identity, monitoring, the DICOM storage account with its
// lifecycle policy, the Event Grid system topic that reports its instance blobs' tier changes and
// the inbox's new scanner files,
// Cosmos DB for the search index, and the Flex Consumption Function App.
// Outputs are named like the app settings they feed (dicomweb/config.py SETTING_NAMES).

targetScope = 'subscription'

@minLength(1)
@maxLength(40)
@description('Name of the environment (azd sets it): names and tags every resource.')
param environmentName string

@minLength(1)
@description('Azure region of every resource.')
param location string

@description('Object id of a developer to grant Blob and Cosmos DB data access to (azd sets it; empty: none).')
param principalId string = ''

@description('Type of that principal.')
@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param principalType string = 'User'

@description('Origins allowed to call the API from a browser (comma-separated), e.g. the Slim site; empty: none.')
param corsOrigins string = ''

@description('Public DICOMweb base URL (RetrieveURL, BulkDataURI) when a proxy or custom domain fronts the app; empty: https://<the app\'s default host name>/v1.')
param publicBaseUrl string = ''

@description('Proxies (IP addresses or CIDR ranges, comma-separated; * for any) whose Forwarded / X-Forwarded-* headers name the public origin when publicBaseUrl is empty; empty: none.')
param trustedProxies string = ''

@description('OpenID Connect issuer whose bearer tokens the API requires, e.g. https://login.microsoftonline.com/<tenant>/v2.0. Required unless allowAnonymousAccessToPatientData is true.')
param authIssuer string = ''

@description('Accepted token audiences, comma-separated (the API app registration\'s client id or api:// URI). Required with authIssuer.')
param authAudience string = ''

@description('Deploy WITHOUT authentication: anyone who can reach the app reads, overwrites and deletes every slide and its patient data. Only for throwaway test data; never with authIssuer.')
param allowAnonymousAccessToPatientData bool = false

@description('App roles or scopes granting read (search, retrieve, change feed), comma-separated.')
param readerRoles string = 'DICOM.Reader,dicom.read'

@description('App roles or scopes granting write (STOW-RS, PUT, upload sessions), comma-separated.')
param writerRoles string = 'DICOM.Writer,dicom.write'

@description('App roles or scopes granting everything, delete included, comma-separated.')
param ownerRoles string = 'DICOM.Owner,dicom.owner'

@description('Largest STOW-RS request body in MB; larger instances go through upload sessions.')
param maxRequestMB int = 100

@description('Memory of one Function App instance in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Most instances the Function App scales out to.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('HTTP requests one instance serves at once (default: infra/scale.json, which dicomweb serve applies too).')
@minValue(1)
@maxValue(1000)
param httpPerInstanceConcurrency int = loadJsonContent('scale.json').httpPerInstanceConcurrency

@description('Instances kept running for the HTTP functions (always ready, billed while idle); 0: none, every instance starts on demand.')
@minValue(0)
param alwaysReady int = 0

@description('Cosmos DB serverless (pay per request); false: provisioned autoscale throughput.')
param cosmosServerless bool = true

@description('Replication of the DICOM storage account. Zone-redundant SKUs (ZRS, GZRS, RA-GZRS) have no Archive tier: deploy them with archiveUnreadInstances=false.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_RAGRS'
  'Standard_GZRS'
  'Standard_RAGZRS'
])
param storageSku string = 'Standard_LRS'

@description('Move instance blobs unread for a year to the Archive tier (the lifecycle rules of dicomweb/storage/lifecycle-policy.json, where the day counts are).')
param archiveUnreadInstances bool = true

@description('Instances at most this size in MB (and every label, overview and thumbnail) stay in the hot tier.')
param hotPinMB int = 256

@description('Largest scanner file the inbox converts, in GB (it is downloaded to the instance\'s disk and converted beside it).')
@minValue(1)
param inboxMaxGB int = 8

@description('What becomes of an inbox file once handled: move (under done/ or failed/) or delete (a stored one; a failed one is always moved under failed/).')
@allowed([
  'move'
  'delete'
])
param inboxSources string = 'move'

@description('Blob storage list prices per GB and month by access tier (DICOMWEB_PRICES_PER_GB_MONTH: each of Hot, Cool, Cold and Archive once), for the usage report. Default: LRS, East US, pay as you go.')
param storagePricesPerGbMonth string = 'Hot=0.0184,Cool=0.01,Cold=0.0036,Archive=0.00099'

// Fail closed: the deployment stops unless authentication is configured or explicitly waived. (Each
// expression of this file stays on one line: checkov's Bicep parser reads no line that starts with ?.)
var noAuthentication = 'Set authIssuer and authAudience (Entra ID), or allowAnonymousAccessToPatientData=true to deploy without authentication.'
var contradictoryAuthentication = 'authIssuer and allowAnonymousAccessToPatientData=true contradict each other: choose one.'
var noAudience = 'authAudience must name the accepted token audiences when authIssuer is set.'
var authDisabled = empty(authIssuer) ? (allowAnonymousAccessToPatientData ? true : fail(noAuthentication)) : (allowAnonymousAccessToPatientData ? fail(contradictoryAuthentication) : (empty(authAudience) ? fail(noAudience) : false))
// The Archive tier exists on LRS, GRS and RA-GRS accounts only: on a zone-redundant one the archive rule
// would be accepted and never run, so the deployment stops instead.
var noArchiveTier = '${storageSku} has no Archive tier: deploy it with archiveUnreadInstances=false, or choose Standard_LRS, Standard_GRS or Standard_RAGRS.'
var archive = archiveUnreadInstances && contains(storageSku, 'ZRS') ? fail(noArchiveTier) : archiveUnreadInstances
var tags = {
  'azd-env-name': environmentName
}
var suffix = toLower(uniqueString(subscription().id, environmentName, location))
// Defaults of dicomweb/config.py.
var instanceContainer = 'dicom-instances'
var sidecarContainer = 'dicom-sidecars'
var stagingContainer = 'dicom-staging'
var jobsQueue = 'dicomweb-jobs'
var blobEventsQueue = 'dicomweb-blob-events'
// Scanner files dropped here are converted and stored (dicomweb/inbox.py); Event Grid delivers their BlobCreated
// events to inboxQueue.
var inboxContainer = 'dicom-inbox'
var inboxQueue = 'dicomweb-inbox'
// Where Event Grid keeps the blob events it could not deliver to blobEventsQueue.
var deadLetterContainer = 'dicom-events-deadletter'
var cosmosDatabase = 'dicomweb'
var cosmosContainer = 'index'

resource group 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

module identity 'modules/identity.bicep' = {
  scope: group
  name: 'identity'
  params: {
    name: 'id-dicomweb-${suffix}'
    location: location
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  scope: group
  name: 'monitoring'
  params: {
    name: 'dicomweb-${suffix}'
    location: location
    tags: tags
    identityPrincipalId: identity.outputs.principalId
  }
}

module storage 'modules/storage.bicep' = {
  scope: group
  name: 'storage'
  params: {
    name: take('stdicom${suffix}', 24)
    location: location
    tags: tags
    sku: storageSku
    instanceContainer: instanceContainer
    sidecarContainer: sidecarContainer
    stagingContainer: stagingContainer
    deploymentContainer: 'app-package'
    jobsQueue: jobsQueue
    blobEventsQueue: blobEventsQueue
    inboxContainer: inboxContainer
    inboxQueue: inboxQueue
    deadLetterContainer: deadLetterContainer
    archive: archive
    identityPrincipalId: identity.outputs.principalId
    principalId: principalId
    principalType: principalType
  }
}

module events 'modules/events.bicep' = {
  scope: group
  name: 'events'
  params: {
    name: 'evgt-dicomweb-${suffix}'
    location: location
    tags: tags
    storageAccountName: storage.outputs.name
    instanceContainer: storage.outputs.instanceContainer
    blobEventsQueue: storage.outputs.blobEventsQueue
    deadLetterContainer: storage.outputs.deadLetterContainer
  }
}

// The inbox's subscription on the topic above: it deploys once the events module, whose role lets the topic
// dead-letter, has (it reads the topic's name from that module).
module inbox 'modules/inbox.bicep' = {
  scope: group
  name: 'inbox'
  params: {
    topicName: events.outputs.topicName
    storageAccountName: storage.outputs.name
    inboxContainer: storage.outputs.inboxContainer
    inboxQueue: storage.outputs.inboxQueue
    deadLetterContainer: storage.outputs.deadLetterContainer
  }
}

module cosmos 'modules/cosmos.bicep' = {
  scope: group
  name: 'cosmos'
  params: {
    name: 'cosmos-dicomweb-${suffix}'
    location: location
    tags: tags
    databaseName: cosmosDatabase
    containerName: cosmosContainer
    serverless: cosmosServerless
    identityPrincipalId: identity.outputs.principalId
    principalId: principalId
  }
}

module app 'modules/functionapp.bicep' = {
  scope: group
  name: 'functionapp'
  params: {
    name: 'func-dicomweb-${suffix}'
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    storageBlobEndpoint: storage.outputs.blobEndpoint
    storageQueueEndpoint: storage.outputs.queueEndpoint
    jobsQueue: storage.outputs.jobsQueue
    blobEventsQueue: storage.outputs.blobEventsQueue
    inboxContainer: storage.outputs.inboxContainer
    inboxQueue: storage.outputs.inboxQueue
    deploymentContainer: storage.outputs.deploymentContainer
    instanceContainer: storage.outputs.instanceContainer
    sidecarContainer: storage.outputs.sidecarContainer
    stagingContainer: storage.outputs.stagingContainer
    cosmosEndpoint: cosmos.outputs.endpoint
    cosmosDatabase: cosmos.outputs.databaseName
    cosmosContainer: cosmos.outputs.containerName
    appInsightsConnectionString: monitoring.outputs.connectionString
    corsOrigins: corsOrigins
    publicBaseUrl: publicBaseUrl
    trustedProxies: trustedProxies
    authIssuer: authIssuer
    authAudience: authAudience
    authDisabled: authDisabled
    readerRoles: readerRoles
    writerRoles: writerRoles
    ownerRoles: ownerRoles
    maxRequestMB: maxRequestMB
    hotPinMB: hotPinMB
    inboxMaxGB: inboxMaxGB
    inboxSources: inboxSources
    pricesPerGbMonth: storagePricesPerGbMonth
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    httpPerInstanceConcurrency: httpPerInstanceConcurrency
    alwaysReady: alwaysReady
  }
}

output AZURE_LOCATION string = location
output AZURE_RESOURCE_GROUP string = group.name
output AZURE_CLIENT_ID string = identity.outputs.clientId
output DICOMWEB_STORAGE_ACCOUNT_URL string = storage.outputs.blobEndpoint
output DICOMWEB_INSTANCE_CONTAINER string = storage.outputs.instanceContainer
output DICOMWEB_SIDECAR_CONTAINER string = storage.outputs.sidecarContainer
output DICOMWEB_STAGING_CONTAINER string = storage.outputs.stagingContainer
output DICOMWEB_JOBS_QUEUE string = storage.outputs.jobsQueue
output DICOMWEB_BLOB_EVENTS_QUEUE string = storage.outputs.blobEventsQueue
output DICOMWEB_INBOX_CONTAINER string = storage.outputs.inboxContainer
output DICOMWEB_INBOX_QUEUE string = storage.outputs.inboxQueue
output DICOMWEB_PRICES_PER_GB_MONTH string = storagePricesPerGbMonth
output DICOMWEB_COSMOS_ENDPOINT string = cosmos.outputs.endpoint
output DICOMWEB_COSMOS_DATABASE string = cosmos.outputs.databaseName
output DICOMWEB_COSMOS_CONTAINER string = cosmos.outputs.containerName
output DICOMWEB_CORS_ORIGINS string = corsOrigins
output DICOMWEB_AUTH_ISSUER string = authIssuer
output DICOMWEB_AUTH_AUDIENCE string = authAudience
output SERVICE_API_NAME string = app.outputs.name
output SERVICE_API_URI string = 'https://${app.outputs.defaultHostName}/v1'
