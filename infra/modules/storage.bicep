// The DICOM data: one storage account (shared-key access off, TLS 1.2, no public blobs) with the
// instance, sidecar and staging containers, soft delete, last-access tracking, and the lifecycle
// policy that moves unread instance blobs to cool, cold and archive while pinned ones stay hot;
// and the job queue (with its poison queue) the service's queue-triggered function consumes.

@description('Storage account name (3-24 lower-case letters and digits).')
param name string

@description('Azure region.')
param location string

@description('Tags of every resource.')
param tags object

@description('Replication: LRS is cheapest; ZRS survives a zone outage.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_RAGRS'
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

@description('Days deleted blobs and containers can be restored.')
param softDeleteDays int = 14

@description('Days without a read before an instance blob moves to Cool.')
param coolAfterDays int = 30

@description('Days without a read before an instance blob moves to Cold.')
param coldAfterDays int = 90

@description('Days without a read before an instance blob moves to Archive.')
param archiveAfterDays int = 365

@description('Days a blob stays out of Archive after a tier change (a rehydrated slide is not re-archived at once).')
param rehydratedStayDays int = 30

@description('Days after which an upload session\'s staged blobs are deleted.')
param stagingExpiryDays int = 2

@description('Blob index tag the lifecycle policy filters on (dicomweb/storage/blobs.py TIER_TAG).')
param tierTag string = 'dicomweb_tier'

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

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
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
    publicNetworkAccess: 'Enabled'
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
  for container in [instanceContainer, sidecarContainer, stagingContainer, deploymentContainer]: {
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
  for queue in [jobsQueue, '${jobsQueue}-poison']: {
    parent: queueService
    name: queue
  }
]

resource lifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = {
  parent: account
  name: 'default'
  dependsOn: [
    blobService
  ]
  properties: {
    policy: {
      rules: [
        {
          name: 'tier-unread-instances'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [
                'blockBlob'
              ]
              prefixMatch: [
                '${instanceContainer}/'
              ]
              // Only blobs the service tagged "auto": labels, overviews, thumbnails, small levels
              // and every sidecar are tagged "hot" and never leave the hot tier.
              blobIndexMatch: [
                {
                  name: tierTag
                  op: '=='
                  value: 'auto'
                }
              ]
            }
            actions: {
              baseBlob: {
                enableAutoTierToHotFromCool: true
                tierToCool: {
                  daysAfterLastAccessTimeGreaterThan: coolAfterDays
                }
                tierToCold: {
                  daysAfterLastAccessTimeGreaterThan: coldAfterDays
                }
                tierToArchive: {
                  daysAfterLastAccessTimeGreaterThan: archiveAfterDays
                  daysAfterLastTierChangeGreaterThan: rehydratedStayDays
                }
              }
            }
          }
        }
        {
          name: 'expire-staged-uploads'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [
                'blockBlob'
              ]
              prefixMatch: [
                '${stagingContainer}/'
              ]
            }
            actions: {
              baseBlob: {
                delete: {
                  daysAfterModificationGreaterThan: stagingExpiryDays
                }
              }
            }
          }
        }
      ]
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
output instanceContainer string = containers[0].name
output sidecarContainer string = containers[1].name
output stagingContainer string = containers[2].name
output deploymentContainer string = containers[3].name
