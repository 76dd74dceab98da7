"""``infra/`` and ``azure.yaml``: every template parses, and deploys what the code expects.

Nothing can be deployed from here, so the templates are checked by construction: they
parse with tree-sitter-bicep without error nodes, modules get exactly the parameters they
declare, and the resources carry the properties the code relies on (Flex Consumption with
Python and HTTP streams, managed identity everywhere and no secret, the lifecycle policy
filtering on the tag the code writes, the Cosmos partition key and indexing policy the
QIDO code uses), with app settings and outputs named as ``dicomweb/config.py`` reads them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dicomweb import jobs
from dicomweb.config import SETTING_NAMES, Settings
from dicomweb.storage.blobs import AUTO, TIER_TAG
from dicomweb.storage.index import INDEXING_POLICY, PARTITION_KEY
from tests.bicep import BicepFile, Declaration, Expr, parse

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))
SECRET = re.compile(r"listKeys\(|listConnectionStrings\(|AccountKey=|SharedAccessSignature|primaryMasterKey", re.I)
BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
#: Connection properties the Functions host reads for the queue trigger (the code reads the URI only).
HOST_CONNECTION = {"DICOMWEB_QUEUES__credential", "DICOMWEB_QUEUES__clientId"}
#: Settings for local use only: connection strings the deployment has no place for (the identity is used).
LOCAL_ONLY = {"DICOMWEB_QUEUES"}
COSMOS_DATA_CONTRIBUTOR = "00000000-0000-0000-0000-000000000002"


def _file(name: str) -> BicepFile:
    return parse(INFRA / name)


def _one(file: BicepFile, resource_type: str) -> Declaration:
    (found,) = file.resources(resource_type)
    return found


def _app_settings() -> dict[str, object]:
    app = _one(_file("modules/functionapp.bicep"), "Microsoft.Web/sites")
    return {entry["name"]: entry["value"] for entry in app.value["properties"]["siteConfig"]["appSettings"]}


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_every_template_parses_and_documents_its_parameters(path: Path) -> None:
    template = parse(path)
    for param in template.all("param").values():
        assert any(d.startswith("@description(") for d in param.decorators), f"{param.name} has no description"
    assert not SECRET.search(path.read_text()), "no key or connection string is ever read or written"


def test_modules_get_exactly_the_parameters_they_declare() -> None:
    main = _file("main.bicep")
    assert main.target_scope == "subscription"
    modules = main.all("module")
    assert set(modules) == {"identity", "monitoring", "storage", "cosmos", "app"}
    for module in modules.values():
        target = parse(INFRA / module.type)
        declared = target.all("param")
        given = module.value["params"]
        assert set(given) <= set(declared), f"{module.type}: unknown parameters {set(given) - set(declared)}"
        required = {name for name, p in declared.items() if p.value is None}
        assert required <= set(given), f"{module.type}: missing parameters {required - set(given)}"
        assert isinstance(module.value["scope"], Expr) and module.value["scope"].text == "group"


def test_parameters_file_feeds_declared_parameters() -> None:
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    declared = _file("main.bicep").all("param")
    assert set(parameters) <= set(declared)
    required = {name for name, p in declared.items() if p.value is None}
    assert required <= set(parameters)
    assert parameters["environmentName"]["value"] == "${AZURE_ENV_NAME}"
    assert parameters["principalId"]["value"] == "${AZURE_PRINCIPAL_ID}"


def test_azd_deploys_this_folder_as_a_python_function_app() -> None:
    text = (ROOT / "azure.yaml").read_text()
    assert re.search(r"^services:\n  api:\n    project: \.\n    language: python\n    host: function$", text, re.M)
    app = _one(_file("modules/functionapp.bicep"), "Microsoft.Web/sites")
    assert Expr("union(tags, {\n    'azd-service-name': 'api'\n  })") == app.value["tags"]
    ignored = (ROOT / ".funcignore").read_text().split()
    assert {"tests/", "bench/", "node_modules/", ".venv/", "infra/"} <= set(ignored)


def test_the_function_app_is_python_on_flex_consumption_with_http_streams() -> None:
    template = _file("modules/functionapp.bicep")
    plan = _one(template, "Microsoft.Web/serverfarms")
    assert plan.value["sku"] == {"tier": "FlexConsumption", "name": "FC1"}
    app = _one(template, "Microsoft.Web/sites")
    assert app.value["kind"] == "functionapp,linux"
    assert app.value["identity"]["type"] == "UserAssigned"
    config = app.value["properties"]["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    assert config["scaleAndConcurrency"] == {"instanceMemoryMB": Expr("instanceMemoryMB"),
                                             "maximumInstanceCount": Expr("maximumInstanceCount")}
    storage = config["deployment"]["storage"]
    assert storage["type"] == "blobContainer" and storage["authentication"]["type"] == "UserAssignedIdentity"
    params = template.all("param")
    assert "@allowed([\n  512\n  2048\n  4096\n])" in params["instanceMemoryMB"].decorators
    settings = _app_settings()
    assert settings["PYTHON_ENABLE_INIT_INDEXING"] == "1"
    assert settings["FUNCTIONS_REQUEST_BODY_SIZE_LIMIT"] == Expr("string((maxRequestMB + 1) * 1048576)")
    assert settings["DICOMWEB_MAX_REQUEST_MB"] == Expr("string(maxRequestMB)")
    assert "FUNCTIONS_WORKER_RUNTIME" not in settings, "Flex Consumption sets the runtime in functionAppConfig"
    assert app.value["properties"]["siteConfig"]["http20Enabled"] is True, "browsers fetch tiles over HTTP/2"


def test_app_settings_name_every_setting_the_code_reads_and_nothing_stale() -> None:
    settings = _app_settings()
    assert {name for name in settings if name.startswith("DICOMWEB_")} == set(SETTING_NAMES) - LOCAL_ONLY \
        | HOST_CONNECTION
    for path in BICEP_FILES:
        assert set(re.findall(r"\bDICOMWEB_[A-Z0-9_]+\b", path.read_text())) <= set(SETTING_NAMES), path


def test_app_settings_hold_no_secret_and_use_the_identity() -> None:
    settings = _app_settings()
    assert settings["DICOMWEB_STORAGE_CONNECTION_STRING"] == "" and settings["DICOMWEB_COSMOS_CONNECTION_STRING"] == ""
    assert settings["DICOMWEB_STORAGE_ACCOUNT_URL"] == Expr("storageBlobEndpoint")
    assert settings["DICOMWEB_COSMOS_ENDPOINT"] == Expr("cosmosEndpoint")
    assert settings["AZURE_CLIENT_ID"] == settings["AzureWebJobsStorage__clientId"] == Expr("identityClientId")
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert "AzureWebJobsStorage" not in settings, "the host storage is reached with the identity too"
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == Expr(
        "'ClientId=${identityClientId};Authorization=AAD'")


def test_literal_app_settings_are_the_local_defaults() -> None:
    local = json.loads((ROOT / "local.settings.json.example").read_text())["Values"]
    for name, value in _app_settings().items():
        if name in SETTING_NAMES and isinstance(value, str) and "CONNECTION_STRING" not in name:
            assert value == local[name], f"{name}: Bicep {value!r}, local {local[name]!r}"


def test_outputs_are_named_like_the_app_settings_they_feed() -> None:
    outputs = _file("main.bicep").all("output")
    fed = {name for name in outputs if name.startswith("DICOMWEB_")}
    assert fed <= set(SETTING_NAMES)
    assert {"DICOMWEB_STORAGE_ACCOUNT_URL", "DICOMWEB_COSMOS_ENDPOINT", "DICOMWEB_INSTANCE_CONTAINER",
            "DICOMWEB_SIDECAR_CONTAINER", "DICOMWEB_STAGING_CONTAINER", "DICOMWEB_COSMOS_DATABASE",
            "DICOMWEB_COSMOS_CONTAINER", "AZURE_CLIENT_ID"} <= set(outputs)
    app_params = _file("main.bicep").all("module")["app"].value["params"]
    assert outputs["DICOMWEB_STORAGE_ACCOUNT_URL"].value == app_params["storageBlobEndpoint"]
    assert outputs["DICOMWEB_COSMOS_ENDPOINT"].value == app_params["cosmosEndpoint"]


def test_storage_is_private_keyless_and_recoverable() -> None:
    template = _file("modules/storage.bicep")
    account = _one(template, "Microsoft.Storage/storageAccounts").value["properties"]
    assert account["allowSharedKeyAccess"] is False and account["allowBlobPublicAccess"] is False
    assert account["minimumTlsVersion"] == "TLS1_2" and account["supportsHttpsTrafficOnly"] is True
    service = _one(template, "Microsoft.Storage/storageAccounts/blobServices").value["properties"]
    assert service["deleteRetentionPolicy"]["enabled"] is True
    assert service["lastAccessTimeTrackingPolicy"]["enable"] is True
    containers = _one(template, "Microsoft.Storage/storageAccounts/blobServices/containers")
    assert containers.loop is not None and "stagingContainer" in containers.loop
    assert containers.value["properties"] == {"publicAccess": "None"}
    main = _file("main.bicep")
    names = {name: d.value for name, d in main.all("var").items()}
    assert {names["instanceContainer"], names["sidecarContainer"], names["stagingContainer"]} == {
        "dicom-instances", "dicom-sidecars", "dicom-staging"}


def test_lifecycle_tiers_unread_instances_and_never_pinned_ones() -> None:
    template = _file("modules/storage.bicep")
    policy = _one(template, "Microsoft.Storage/storageAccounts/managementPolicies")
    assert policy.value["name"] == "default"
    rules = {rule["name"]: rule["definition"] for rule in policy.value["properties"]["policy"]["rules"]}
    tiering = rules["tier-unread-instances"]
    assert tiering["filters"]["prefixMatch"] == [Expr("'${instanceContainer}/'")]
    assert tiering["filters"]["blobIndexMatch"] == [{"name": Expr("tierTag"), "op": "==", "value": AUTO}]
    assert template.all("param")["tierTag"].value == TIER_TAG
    actions = tiering["actions"]["baseBlob"]
    assert actions["tierToCool"] == {"daysAfterLastAccessTimeGreaterThan": Expr("coolAfterDays")}
    assert actions["tierToCold"] == {"daysAfterLastAccessTimeGreaterThan": Expr("coldAfterDays")}
    assert actions["tierToArchive"] == {"daysAfterLastAccessTimeGreaterThan": Expr("archiveAfterDays"),
                                        "daysAfterLastTierChangeGreaterThan": Expr("rehydratedStayDays")}
    staging = rules["expire-staged-uploads"]
    assert staging["filters"]["prefixMatch"] == [Expr("'${stagingContainer}/'")]
    assert staging["actions"]["baseBlob"] == {"delete": {"daysAfterModificationGreaterThan": Expr("stagingExpiryDays")}}
    days = {name: template.all("param")[name].value for name in ("coolAfterDays", "coldAfterDays", "archiveAfterDays")}
    assert days["coolAfterDays"] < days["coldAfterDays"] < days["archiveAfterDays"]


def test_cosmos_is_keyless_with_the_partition_key_and_indexing_policy_of_the_code() -> None:
    template = _file("modules/cosmos.bicep")
    account = _one(template, "Microsoft.DocumentDB/databaseAccounts").value["properties"]
    assert account["disableLocalAuth"] is True
    assert account["capabilities"] == Expr("serverless ? [\n      {\n        name: 'EnableServerless'\n      }\n    ] : []")
    container = _one(template, "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers").value
    resource = container["properties"]["resource"]
    assert resource["partitionKey"] == {"paths": [PARTITION_KEY], "kind": "Hash"}
    policy = resource["indexingPolicy"]
    assert policy == Expr("loadJsonContent('../../dicomweb/storage/indexing-policy.json')")
    loaded = json.loads((INFRA / "modules" / "../../dicomweb/storage/indexing-policy.json").resolve().read_text())
    assert loaded == INDEXING_POLICY
    assert _file("main.bicep").all("param")["cosmosServerless"].value is True


def test_the_identity_gets_blob_queue_and_cosmos_data_roles_and_a_developer_optionally() -> None:
    storage = _file("modules/storage.bicep")
    assignments = storage.resources("Microsoft.Authorization/roleAssignments")
    assert len(assignments) == 4
    variables = storage.all("var")
    assert variables["blobDataOwner"].value == BLOB_DATA_OWNER
    assert variables["queueDataContributor"].value == QUEUE_DATA_CONTRIBUTOR
    for role in ("blobDataOwner", "queueDataContributor"):
        granted = [a for a in assignments if a.value["properties"]["roleDefinitionId"] == Expr(
            f"subscriptionResourceId('Microsoft.Authorization/roleDefinitions', {role})")]
        app, developer = sorted(granted, key=lambda a: a.condition or "")
        assert app.value["properties"]["principalId"] == Expr("identityPrincipalId") and app.condition is None
        assert developer.condition == "(!empty(principalId))"
    cosmos = _file("modules/cosmos.bicep")
    assert cosmos.all("var")["dataContributor"].value == COSMOS_DATA_CONTRIBUTOR
    roles = cosmos.resources("Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments")
    assert {r.condition for r in roles} == {None, "(!empty(principalId))"}
    for role in roles:
        assert role.value["properties"]["roleDefinitionId"] == Expr(
            "'${account.id}/sqlRoleDefinitions/${dataContributor}'")
    monitoring = _file("modules/monitoring.bicep")
    insights = _one(monitoring, "Microsoft.Insights/components").value["properties"]
    assert insights["DisableLocalAuth"] is True and insights["WorkspaceResourceId"] == Expr("workspace.id")
    assert monitoring.resources("Microsoft.Authorization/roleAssignments")


def test_cors_and_openid_connect_parameters_reach_the_app() -> None:
    main = _file("main.bicep")
    params = main.all("module")["app"].value["params"]
    assert params["corsOrigins"] == Expr("corsOrigins") and params["authIssuer"] == Expr("authIssuer")
    assert params["authAudience"] == Expr("authAudience")
    settings = _app_settings()
    assert settings["DICOMWEB_CORS_ORIGINS"] == Expr("corsOrigins")
    assert settings["DICOMWEB_AUTH_ISSUER"] == Expr("authIssuer")
    assert settings["DICOMWEB_AUTH_AUDIENCE"] == Expr("authAudience")
    assert settings["DICOMWEB_AUTH_DISABLED"] == Expr("authDisabled ? 'true' : 'false'")
    for name in ("readerRoles", "writerRoles", "ownerRoles"):
        assert params[name] == Expr(name)
    assert params["trustedProxies"] == Expr("trustedProxies") and params["publicBaseUrl"] == Expr("publicBaseUrl")
    assert settings["DICOMWEB_TRUSTED_PROXIES"] == Expr("trustedProxies")


def test_there_is_no_anonymous_default() -> None:
    """Authentication is required unless a parameter named for what it does waives it; no browser origin by default."""
    main = _file("main.bicep")
    declared = main.all("param")
    assert declared["authIssuer"].value == "" and declared["allowAnonymousAccessToPatientData"].value is False
    assert declared["corsOrigins"].value == ""
    waiver = main.all("var")["authDisabled"].value
    assert isinstance(waiver, Expr)
    # Without an issuer, only the waiver yields true; every other path of the expression is a fail().
    text = " ".join(waiver.text.split())
    assert text.startswith("empty(authIssuer) ? (allowAnonymousAccessToPatientData ? true : fail(")
    assert text.count("fail(") == 3 and text.count("? true :") == 1 and text.endswith(": false))")
    assert main.all("module")["app"].value["params"]["authDisabled"] == Expr("authDisabled")
    parameters = (INFRA / "main.parameters.json").read_text()
    assert "*" not in parameters and "allowAnonymous" not in parameters
    assert "=*" not in (ROOT / "azure.yaml").read_text()


def test_the_job_queue_and_its_poison_queue_exist_and_the_trigger_reaches_them_with_the_identity() -> None:
    storage = _file("modules/storage.bicep")
    (queues,) = storage.resources("Microsoft.Storage/storageAccounts/queueServices/queues")
    assert queues.loop is not None and "[jobsQueue, '${jobsQueue}-poison']" in queues.loop
    assert _file("main.bicep").all("var")["jobsQueue"].value == Settings().jobs_queue
    settings = _app_settings()
    assert settings["DICOMWEB_JOBS_QUEUE"] == Expr("jobsQueue")
    assert settings["DICOMWEB_QUEUES__queueServiceUri"] == Expr("storageQueueEndpoint")
    assert settings["DICOMWEB_QUEUES__credential"] == "managedidentity"
    assert settings["DICOMWEB_QUEUES__clientId"] == Expr("identityClientId")
    assert "DICOMWEB_QUEUES" not in settings, "no connection string in Azure: the identity-based properties"
    from dicomweb.api.jobs import CONNECTION, run_job

    assert CONNECTION == "DICOMWEB_QUEUES" and run_job
    host = json.loads((ROOT / "host.json").read_text())["extensions"]["queues"]
    assert host["messageEncoding"] == "none", "the service sends JSON text"
    assert host["maxDequeueCount"] == jobs.MAX_DELIVERIES


def test_host_json_matches_what_the_code_and_readme_assume() -> None:
    host = json.loads((ROOT / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensionBundle"] == {"id": "Microsoft.Azure.Functions.ExtensionBundle", "version": "[4.*, 5.0.0)"}
    assert host["extensions"]["http"]["routePrefix"] == "v1"
    assert _file("main.bicep").all("output")["SERVICE_API_URI"].value == Expr(
        "'https://${app.outputs.defaultHostName}/v1'")
    assert "/v1" in (ROOT / "README.md").read_text()
