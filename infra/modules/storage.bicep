// The DICOM data: one storage account (shared-key access off, TLS 1.2, no public blobs) with the
// instance, sidecar, staging and inbox containers, soft delete, last-access tracking, and the lifecycle
// policy that moves unread instance blobs to cool, cold and archive while pinned ones stay hot;
// the job queue, the blob event queue and the inbox queue (each with its poison queue) the service's queue-triggered
// functions consume, and the container Event Grid dead-letters undeliverable blob events to
// (events.bicep). Every container and queue the code uses is created here: in Azure the service
// creates none.

@description('Storage account name (3-24 lower-case letters and digits).')
param name string

@description('Azure region.')
param location string

@description('Tags of every resource.')
param tags object

@description('Replication: LRS is cheapest; ZRS and GZRS survive a zone outage but have no Archive tier.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_RAGRS'
  'Standard_GZRS'
  'Standard_RAGZRS'
])
param sku string = 'Standard_LRS'

@description('Container of the Part 10 files.')
param instanceContainer string

@description('Container of the metadata and frame offset sidecars.')
param sidecarContainer string

@description('Container of the upload sessions.')
param stagingContainer string

@description('Container Flex Consumption deploys the app package from.')
param deploymentContainer string

@description('Queue of the background jobs (DICOMWEB_JOBS_QUEUE); the host adds "-poison" for failed ones.')
param jobsQueue string

@description('Queue Event Grid delivers the instance blobs\' tier events to (DICOMWEB_BLOB_EVENTS_QUEUE); the host adds "-poison" for failed ones.')
param blobEventsQueue string

@description('Container scanner files are dropped in to be converted (DICOMWEB_INBOX_CONTAINER).')
param inboxContainer string

@description('Queue Event Grid delivers the inbox\'s BlobCreated events to (DICOMWEB_INBOX_QUEUE); the host adds "-poison" for failed ones.')
param inboxQueue string

@description('Container Event Grid writes the blob events it could not deliver to (dead-lettering).')
param deadLetterContainer string

@description('Days deleted blobs and containers can be restored.')
param softDeleteDays int = 14

@description('Move unread instance blobs to the Archive tier (false: the rules with tierToArchive are left out; main.bicep refuses archiving on zone-redundant SKUs).')
param archive bool = true

@description('Principal id of the app identity.')
param identityPrincipalId string

@description('Optional developer principal to grant the same data access to.')
param principalId string = ''

@description('Type of the developer principal.')
param principalType string = 'User'

// Storage Blob Data Owner: read/write, blob index tags, user-delegation keys for SAS.
var blobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
// Storage Queue Data Contributor: send, receive, update and delete messages, create the poison queue.
var queueDataContributor = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
// The lifecycle policy: its rules name the containers of main.bicep and the tag values of
// dicomweb/storage/naming.py (tests/test_infra.py checks both, and every rule against the API's rules).
var lifecyclePolicy = loadJsonContent('../../dicomweb/storage/lifecycle-policy.json', '$.policy')
var lifecycleRules = filter(lifecyclePolicy.rules, rule => archive || !contains(rule.definition.actions.baseBlob, 'tierToArchive'))

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: public endpoint by design: clients upload through a SAS of one staging blob and the app runs without a virtual network; every request needs an Entra token or a user-delegation SAS (shared keys are off)
  // checkov:skip=CKV_AZURE_59: same reason as CKV_AZURE_35: the blob endpoint is public, the data is not (no anonymous access, no shared key)
  // checkov:skip=CKV_AZURE_206: LRS is the default for cost; storageSku offers GRS and RA-GRS (which keep the Archive tier) and ZRS/GZRS (which lose it)
  name: name
  location: location
  tags: tags
  sku: {
    name: sku
  }
  kind: 'StorageV2'
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowCrossTenantReplication: false
    // Reachable from the internet (upload clients, the app without a virtual network); only Entra
    // identities and user-delegation SAS get in.
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: softDeleteDays
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: softDeleteDays
    }
    lastAccessTimeTrackingPolicy: {
      enable: true
      name: 'AccessTimeTracking'
      trackingGranularityInDays: 1
      blobType: [
        'blockBlob'
      ]
    }
  }
}

resource containers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [
  for container in [instanceContainer, sidecarContainer, stagingContainer, deploymentContainer, deadLetterContainer, inboxContainer]: {
    parent: blobService
    name: container
    properties: {
      publicAccess: 'None'
    }
  }
]

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [
  for queue in [jobsQueue, '${jobsQueue}-poison', blobEventsQueue, '${blobEventsQueue}-poison', inboxQueue, '${inboxQueue}-poison']: {
    parent: queueService
    name: queue
  }
]

// The lifecycle policy of dicomweb/storage/lifecycle-policy.json (the local tools read the same file), as-is
// but for the rules that move blobs to Archive, left out when archiving is off.
resource lifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = {
  parent: account
  name: 'default'
  dependsOn: [
    blobService
  ]
  properties: {
    policy: {
      rules: lifecycleRules
    }
  }
}

resource appOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: account
  name: guid(account.id, identityPrincipalId, blobDataOwner)
  properties: {
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataOwner)
  }
}

resource developerOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(principalId)) {
  scope: account
  name: guid(account.id, principalId, blobDataOwner)
  properties: {
    principalId: principalId
    principalType: principalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataOwner)
  }
}

resource appQueues 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: account
  name: guid(account.id, identityPrincipalId, queueDataContributor)
  properties: {
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', queueDataContributor)
  }
}

resource developerQueues 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(principalId)) {
  scope: account
  name: guid(account.id, principalId, queueDataContributor)
  properties: {
    principalId: principalId
    principalType: principalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', queueDataContributor)
  }
}

output name string = account.name
output blobEndpoint string = account.properties.primaryEndpoints.blob
output queueEndpoint string = account.properties.primaryEndpoints.queue
output jobsQueue string = queues[0].name
output blobEventsQueue string = queues[2].name
output instanceContainer string = containers[0].name
output sidecarContainer string = containers[1].name
output stagingContainer string = containers[2].name
output deploymentContainer string = containers[3].name
output deadLetterContainer string = containers[4].name
output inboxContainer string = containers[5].name
output inboxQueue string = queues[4].name
