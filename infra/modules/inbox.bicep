// The inbox: a scanner file written to the inbox container (azcopy, Storage Explorer, a scanner's export)
// is converted to DICOM and stored by the app's queue-triggered inbox_events function (dicomweb/inbox.py).
// The DICOM account's system topic (events.bicep: an account has one) delivers the container's BlobCreated
// events to the inbox queue with its own identity, which gets only what that takes: sending messages to
// that one queue. The files the app moves under done/ and failed/ are not delivered again. Undeliverable
// events are dead-lettered to the container events.bicep already lets the topic write to.

@description('The DICOM account\'s system topic (events.bicep).')
param topicName string

@description('The DICOM storage account, home of the inbox container and queue.')
param storageAccountName string

@description('Container scanner files are dropped in (DICOMWEB_INBOX_CONTAINER); storage.bicep creates it.')
param inboxContainer string

@description('Queue the BlobCreated events are delivered to (DICOMWEB_INBOX_QUEUE); storage.bicep creates it and its poison queue.')
param inboxQueue string

@description('Container undeliverable events are written to; storage.bicep creates it, events.bicep lets the topic write to it.')
param deadLetterContainer string

// Storage Queue Data Message Sender: add messages to a queue (nothing else).
var queueMessageSender = 'c6a89b2d-59bc-44d0-9896-0f6e12d7b80a'
// Subjects read /blobServices/default/containers/<container>/blobs/<blob name>.
var blobs = '/blobServices/default/containers/${inboxContainer}/blobs/'

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' existing = {
  parent: account
  name: 'default'
}

resource queue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' existing = {
  parent: queueService
  name: inboxQueue
}

resource topic 'Microsoft.EventGrid/systemTopics@2025-02-15' existing = {
  name: topicName
}

resource queueSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: queue
  name: guid(queue.id, topic.id, queueMessageSender)
  properties: {
    principalId: topic.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', queueMessageSender)
  }
}

resource scannerFiles 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15' = {
  parent: topic
  name: 'inbox-scanner-files'
  // The identity needs its role before the first delivery: a refused one (403) is not retried.
  dependsOn: [
    queueSender
  ]
  properties: {
    eventDeliverySchema: 'EventGridSchema'
    filter: {
      includedEventTypes: [
        'Microsoft.Storage.BlobCreated'
      ]
      subjectBeginsWith: blobs
      isSubjectCaseSensitive: true
      // The app moves each file it handled under done/ or failed/ (dicomweb.inbox.DONE, FAILED): a copy, which
      // is a BlobCreated too. Advanced string filters ignore case (isSubjectCaseSensitive is for
      // subjectBeginsWith and subjectEndsWith only), so files under Done/ or FAILED/ are not delivered either.
      advancedFilters: [
        {
          operatorType: 'StringNotBeginsWith'
          key: 'subject'
          values: [
            '${blobs}done/'
            '${blobs}failed/'
          ]
        }
      ]
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
          // -1: a message never expires, so a dropped file waits in the queue however long the app is stopped.
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
          blobContainerName: deadLetterContainer
        }
      }
    }
  }
}

output subscriptionName string = scannerFiles.name
