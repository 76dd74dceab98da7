// How the service learns that an instance blob changed tier: an Event Grid system topic on the DICOM
// storage account, with one subscription that delivers the instance blobs' tier events (lifecycle moved
// a blob to Archive, Cool or Cold; a rehydration started or ended) to a Storage
// Queue the service's queue-triggered function consumes. Event Grid writes each event as a base64
// message (the function decodes it). The topic delivers with its own system-assigned identity (the
// account allows no shared key), which gets only what that takes: sending messages to that one queue,
// and writing blobs to the one container undeliverable events are dead-lettered to.

@description('System topic name.')
param name string

@description('Azure region: the storage account\'s (a system topic lives in its source\'s region).')
param location string

@description('Tags of every resource.')
param tags object

@description('The DICOM storage account, source of the events and home of the queue and the dead-letter container.')
param storageAccountName string

@description('Container of the Part 10 files: only its blobs\' events are delivered.')
param instanceContainer string

@description('Queue the events are delivered to (DICOMWEB_BLOB_EVENTS_QUEUE); storage.bicep creates it and its poison queue.')
param blobEventsQueue string

@description('Container undeliverable events are written to; storage.bicep creates it.')
param deadLetterContainer string

// Storage Queue Data Message Sender: add messages to a queue (nothing else).
var queueMessageSender = 'c6a89b2d-59bc-44d0-9896-0f6e12d7b80a'
// Storage Blob Data Contributor: read, write and delete blobs (dead-lettering writes one blob per batch).
var blobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
// The tier an instance blob is in changes through these events only: Set Blob Tier completed (lifecycle
// or the service), a rehydration from Archive started. Not BlobCreated: every file is written under a new
// name (rehydration is in place) and starts online, so each store would cost an event for nothing.
var tierEvents = [
  'Microsoft.Storage.BlobTierChanged'
  'Microsoft.Storage.AsyncOperationInitiated'
]

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' existing = {
  parent: account
  name: 'default'
}

resource queue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' existing = {
  parent: queueService
  name: blobEventsQueue
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: account
  name: 'default'
}

resource deadLetters 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: deadLetterContainer
}

resource topic 'Microsoft.EventGrid/systemTopics@2025-02-15' = {
  name: name
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    source: account.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

// Scoped to the one queue and the one container (the narrowest scopes these roles take).
resource queueSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: queue
  name: guid(queue.id, topic.id, queueMessageSender)
  properties: {
    principalId: topic.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', queueMessageSender)
  }
}

resource deadLetterWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: deadLetters
  name: guid(deadLetters.id, topic.id, blobDataContributor)
  properties: {
    principalId: topic.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataContributor)
  }
}

resource tierChanges 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15' = {
  parent: topic
  name: 'instance-tier-changes'
  // The identity needs its roles before the first delivery: a refused one (403) is not retried.
  dependsOn: [
    queueSender
    deadLetterWriter
  ]
  properties: {
    eventDeliverySchema: 'EventGridSchema'
    filter: {
      includedEventTypes: tierEvents
      // Subjects read /blobServices/default/containers/<container>/blobs/<blob name>; Part 10 files end in .dcm.
      subjectBeginsWith: '/blobServices/default/containers/${instanceContainer}/blobs/'
      subjectEndsWith: '.dcm'
      isSubjectCaseSensitive: true
    }
    deliveryWithResourceIdentity: {
      identity: {
        type: 'SystemAssigned'
      }
      destination: {
        endpointType: 'StorageQueue'
        properties: {
          resourceId: account.id
          queueName: queue.name
          // -1: a message never expires, so a tier change waits in the queue however long the app is stopped.
          queueMessageTimeToLiveInSeconds: -1
        }
      }
    }
    // The documented maximums (30 attempts, 24 hours), then the event is dead-lettered, not dropped.
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
    deadLetterWithResourceIdentity: {
      identity: {
        type: 'SystemAssigned'
      }
      deadLetterDestination: {
        endpointType: 'StorageBlob'
        properties: {
          resourceId: account.id
          blobContainerName: deadLetters.name
        }
      }
    }
  }
}

output topicName string = topic.name
output subscriptionName string = tierChanges.name
