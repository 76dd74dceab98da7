// Log Analytics and workspace-based Application Insights. Local (instrumentation-key) auth is off:
// the app sends telemetry with its managed identity (Monitoring Metrics Publisher).

@description('Base of the resource names.')
param name string

@description('Azure region.')
param location string

@description('Tags of every resource.')
param tags object

@description('Principal id of the app identity, allowed to publish telemetry.')
param identityPrincipalId string

@description('Days Log Analytics keeps data.')
param retentionDays int = 30

var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-${name}'
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionDays
  }
}

resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-${name}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    DisableLocalAuth: true
  }
}

resource publisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: insights
  name: guid(insights.id, identityPrincipalId, monitoringMetricsPublisher)
  properties: {
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
  }
}

output connectionString string = insights.properties.ConnectionString
output name string = insights.name
