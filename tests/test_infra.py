"""``infra/`` and ``azure.yaml``: every template parses, and deploys what the code expects.

Nothing can be deployed from here, so the templates are checked by construction: they
parse with tree-sitter-bicep without error nodes, modules get exactly the parameters they
declare, and the resources carry the properties the code relies on (Flex Consumption with
Python and HTTP streams, managed identity everywhere and no secret, the Cosmos partition key
and indexing policy the QIDO code uses), with app settings and outputs named as
``dicomweb/config.py`` reads them. The lifecycle policy is checked rule by rule against the
management-policy API's documented constraints, the Event Grid subscription that reports the
instance blobs' tier changes against the event-subscription API's, and checkov's Bicep checks
must all pass or be suppressed with a reason.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from dicomweb import jobs
from dicomweb.config import DEFAULT_PRICES, SETTING_NAMES, Settings
from dicomweb.reindex import RUNS
from dicomweb.storage.naming import AUTO, HOT, REHYDRATED, TIER_TAG, Location, new_generation
from dicomweb.storage.cosmos import INDEXING_POLICY, PARTITION_KEY
from dicomweb.storage.queues import POISON_SUFFIX
from dicomweb.uploads import STUCK_SECONDS, Session
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
LIFECYCLE_JSON = ROOT / "dicomweb" / "storage" / "lifecycle-policy.json"
SCALE_JSON = INFRA / "scale.json"
CHECKOV = ROOT / ".venv" / "checkov" / "bin" / "checkov"


# --- The management-policy API's rules, as documented ---------------------------------------------------------------

#: Age conditions of an action on the current version: an action takes exactly one of them.
AGES = ("daysAfterModificationGreaterThan", "daysAfterCreationGreaterThan", "daysAfterLastAccessTimeGreaterThan")
LAST_ACCESS = "daysAfterLastAccessTimeGreaterThan"
TIER_CHANGE = "daysAfterLastTierChangeGreaterThan"
#: Per target: the actions it takes, the age conditions an action takes exactly one of, and the one age
#: condition that ``daysAfterLastTierChangeGreaterThan`` may join (on ``tierToArchive`` only).
TARGETS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "baseBlob": (("tierToCool", "tierToCold", "tierToArchive", "delete"), AGES, "daysAfterModificationGreaterThan"),
    "snapshot": (("tierToCool", "tierToCold", "tierToArchive", "delete"), ("daysAfterCreationGreaterThan",),
                 "daysAfterCreationGreaterThan"),
    "version": (("tierToCool", "tierToCold", "tierToArchive", "delete"), ("daysAfterCreationGreaterThan",),
                "daysAfterCreationGreaterThan"),
}
AUTO_TIER = "enableAutoTierToHotFromCool"
BLOB_TYPES = {"blockBlob", "appendBlob"}
RULE_NAME = re.compile(r"[A-Za-z0-9]{1,256}")
#: Characters of blob index tag names and values.
TAG_TEXT = re.compile(r"[A-Za-z0-9 +\-./:=_]*")
MAX_RULES, MAX_PREFIXES, MAX_TAG_FILTERS = 100, 10, 10


def _condition_errors(target: str, action: str, condition: Any, last_access_tracking: bool) -> list[str]:
    actions, ages, tier_change_partner = TARGETS[target]
    where = f"{target}.{action}"
    if action not in actions:
        return [f"{where}: {target} takes no action {action!r} (only {', '.join(actions)})"]
    if not isinstance(condition, dict):
        return [f"{where}: an object of run conditions"]
    errors = []
    given = [name for name in condition if name in ages]
    if len(given) != 1:
        errors.append(f"{where}: exactly one of {', '.join(ages)}, not {given or 'none'}")
    for name in set(condition) - set(ages) - {TIER_CHANGE}:
        errors.append(f"{where}: {target} takes no condition {name!r}")
    if TIER_CHANGE in condition and action != "tierToArchive":
        errors.append(f"{where}: {TIER_CHANGE} is accepted on tierToArchive only")
    elif TIER_CHANGE in condition and given != [tier_change_partner]:
        errors.append(f"{where}: {TIER_CHANGE} only together with {tier_change_partner}, not {given}")
    for name, days in condition.items():
        if isinstance(days, bool) or not isinstance(days, int) or days < 0:
            errors.append(f"{where}.{name}: a whole number of days, not {days!r}")
    if LAST_ACCESS in condition and not last_access_tracking:
        errors.append(f"{where}: {LAST_ACCESS} needs the blob service's lastAccessTimeTrackingPolicy enabled")
    return errors


def _filter_errors(filters: Any, containers: set[str], delete_only: bool) -> list[str]:
    if not isinstance(filters, dict):
        return ["filters: an object with blobTypes"]
    errors = [f"filters: no filter {name!r}" for name in set(filters) - {"blobTypes", "prefixMatch", "blobIndexMatch"}]
    types = filters.get("blobTypes")
    if not isinstance(types, list) or not types or not set(types) <= BLOB_TYPES:
        errors.append(f"filters.blobTypes: required, some of {sorted(BLOB_TYPES)}, not {types!r}")
    elif "appendBlob" in types and not delete_only:
        errors.append("filters.blobTypes: appendBlob takes the delete action only")
    prefixes = filters.get("prefixMatch", [])
    if not isinstance(prefixes, list) or len(prefixes) > MAX_PREFIXES:
        errors.append(f"filters.prefixMatch: at most {MAX_PREFIXES} prefixes")
    else:
        errors += [f"filters.prefixMatch: {prefix!r} does not start with a container name ({sorted(containers)})"
                   for prefix in prefixes if not isinstance(prefix, str) or prefix.split("/")[0] not in containers]
    tags = filters.get("blobIndexMatch", [])
    if not isinstance(tags, list) or len(tags) > MAX_TAG_FILTERS:
        return errors + [f"filters.blobIndexMatch: at most {MAX_TAG_FILTERS} tag conditions"]
    for tag in tags:
        if not isinstance(tag, dict) or set(tag) != {"name", "op", "value"}:
            errors.append(f"filters.blobIndexMatch: {tag!r} is not {{name, op, value}}")
            continue
        name, value = tag["name"], tag["value"]
        if tag["op"] != "==":
            errors.append(f"filters.blobIndexMatch: op {tag['op']!r}: only == is supported")
        if not isinstance(name, str) or not 1 <= len(name) <= 128 or not TAG_TEXT.fullmatch(name):
            errors.append(f"filters.blobIndexMatch: tag name {name!r}: 1 to 128 of letters, digits, space, +-./:=_")
        if not isinstance(value, str) or len(value) > 256 or not TAG_TEXT.fullmatch(value):
            errors.append(f"filters.blobIndexMatch: tag value {value!r}: 0 to 256 of letters, digits, space, +-./:=_")
    return errors


def _rule_errors(rule: Any, containers: set[str], last_access_tracking: bool) -> list[str]:
    if not isinstance(rule, dict):
        return ["a rule is an object"]
    errors = [f"no rule property {name!r}" for name in set(rule) - {"name", "enabled", "type", "definition"}]
    if not isinstance(rule.get("name"), str) or not RULE_NAME.fullmatch(rule["name"]):
        errors.append(f"name {rule.get('name')!r}: 1 to 256 letters and digits")
    if rule.get("type") != "Lifecycle":
        errors.append(f"type {rule.get('type')!r}: the only type is Lifecycle")
    if not isinstance(rule.get("enabled", True), bool):
        errors.append("enabled: true or false")
    definition = rule.get("definition")
    if not isinstance(definition, dict) or not isinstance(definition.get("actions"), dict):
        return errors + ["definition: filters and actions"]
    actions = definition["actions"]
    errors += [f"actions: no target {target!r}" for target in set(actions) - set(TARGETS)]
    delete_only = True
    found = 0
    for target, group in actions.items():
        if target not in TARGETS or not isinstance(group, dict):
            continue
        for action, condition in group.items():
            if action == AUTO_TIER:
                cool = group.get("tierToCool")
                if target != "baseBlob" or not isinstance(condition, bool):
                    errors.append(f"{target}.{AUTO_TIER}: a boolean, on baseBlob only")
                elif not isinstance(cool, dict) or LAST_ACCESS not in cool:
                    errors.append(f"{target}.{AUTO_TIER}: only with tierToCool.{LAST_ACCESS}")
                continue
            found += 1
            delete_only = delete_only and action == "delete"
            errors += _condition_errors(target, action, condition, last_access_tracking)
    if not found:
        errors.append("actions: at least one action")
    return errors + _filter_errors(definition.get("filters"), containers, delete_only)


def policy_errors(policy: Any, containers: set[str], last_access_tracking: bool) -> list[str]:
    """What the management-policy API would refuse in ``policy`` (empty: nothing).

    A table-driven reading of the documented constraints: Azure Blob Storage lifecycle management policy
    structure (learn.microsoft.com/azure/storage/blobs/lifecycle-management-policy-structure: up to 100 rules;
    names of up to 256 alphanumeric characters, unique; blobTypes required; up to 10 prefixes, each starting
    with a container name; up to 10 blob index tag conditions; enableAutoTierToHotFromCool only with
    daysAfterLastAccessTimeGreaterThan; daysAfterLastTierChangeGreaterThan on tierToArchive only) and the
    ARM reference of Microsoft.Storage/storageAccounts/managementPolicies (ManagementPolicyBaseBlob:
    enableAutoTierToHotFromCool "requires tierToCool.daysAfterLastAccessTimeGreaterThan";
    DateAfterModification.daysAfterLastTierChangeGreaterThan "only applicable for tierToArchive actions and
    requires daysAfterModificationGreaterThan"; snapshot and version actions age by
    daysAfterCreationGreaterThan; TagFilter: name of 1 to 128 characters, value of 0 to 256, op "==" only;
    daysAfterLastAccessTimeGreaterThan "can only be used in conjunction with last access time tracking
    policy"). Each action takes exactly one of its age conditions (the API refuses several, and an action
    without one has nothing to run on). ``containers`` are the account's containers.
    """
    if not isinstance(policy, dict) or not isinstance(policy.get("rules"), list):
        return ["a policy is an object with rules"]
    rules = policy["rules"]
    errors = [f"no policy property {name!r}" for name in set(policy) - {"rules"}]
    if not 1 <= len(rules) <= MAX_RULES:
        errors.append(f"1 to {MAX_RULES} rules, not {len(rules)}")
    names = [rule.get("name") for rule in rules if isinstance(rule, dict)]
    errors += [f"rule name {name!r} is not unique" for name in sorted({n for n in names if names.count(n) > 1})]
    for rule in rules:
        name = rule.get("name") if isinstance(rule, dict) else None
        errors += [f"{name}: {error}" for error in _rule_errors(rule, containers, last_access_tracking)]
    return errors


def rules_for(policy: dict[str, Any], blob: str, tags: dict[str, str]) -> list[str]:
    """Names of the enabled rules whose filters match block blob ``blob`` ("container/name") with index ``tags``
    (a rule's filters AND together; its prefixes and its tag conditions each OR, AND)."""
    found = []
    for rule in policy["rules"]:
        filters = rule["definition"]["filters"]
        if not rule.get("enabled", True) or "blockBlob" not in filters["blobTypes"]:
            continue
        prefixes = filters.get("prefixMatch", [])
        if prefixes and not any(blob.startswith(prefix) for prefix in prefixes):
            continue
        if all(tags.get(tag["name"]) == tag["value"] for tag in filters.get("blobIndexMatch", [])):
            found.append(rule["name"])
    return found


def without_archive(policy: dict[str, Any]) -> dict[str, Any]:
    """``policy`` as storage.bicep deploys it with archive=false: without the rules that tier to Archive."""
    return {"rules": [rule for rule in policy["rules"] if "tierToArchive" not in rule["definition"]["actions"]
                      .get("baseBlob", {})]}


#: The rule the Bicep deployed before: refused, as daysAfterLastTierChangeGreaterThan goes with
#: daysAfterModificationGreaterThan only (and a rule name has no hyphen).
OLD_TIERING_RULE = {
    "name": "tier-unread-instances",
    "enabled": True,
    "type": "Lifecycle",
    "definition": {
        "filters": {"blobTypes": ["blockBlob"], "prefixMatch": ["dicom-instances/"],
                    "blobIndexMatch": [{"name": TIER_TAG, "op": "==", "value": AUTO}]},
        "actions": {"baseBlob": {
            "enableAutoTierToHotFromCool": True,
            "tierToCool": {"daysAfterLastAccessTimeGreaterThan": 30},
            "tierToCold": {"daysAfterLastAccessTimeGreaterThan": 90},
            "tierToArchive": {"daysAfterLastAccessTimeGreaterThan": 365, "daysAfterLastTierChangeGreaterThan": 30},
        }},
    },
}
CONTAINERS = {"dicom-instances", "dicom-sidecars", "dicom-staging", "app-package"}


def _file(name: str) -> BicepFile:
    return parse(INFRA / name)


def _one(file: BicepFile, resource_type: str) -> Declaration:
    (found,) = file.resources(resource_type)
    return found


def _app_settings() -> dict[str, object]:
    (settings,) = [c for c in _file("modules/functionapp.bicep").resources("Microsoft.Web/sites/config")
                   if c.value["name"] == "appsettings"]
    assert settings.value["parent"] == Expr("app")
    return settings.value["properties"]


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
    assert set(modules) == {"identity", "monitoring", "storage", "events", "cosmos", "app"}
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
    assert config["runtime"] == {"name": "python", "version": "3.12"}
    storage = config["deployment"]["storage"]
    assert storage["type"] == "blobContainer" and storage["authentication"]["type"] == "UserAssignedIdentity"
    params = template.all("param")
    assert "@allowed([\n  512\n  2048\n  4096\n])" in params["instanceMemoryMB"].decorators
    assert "siteConfig" in app.value["properties"] and "appSettings" not in app.value["properties"]["siteConfig"]
    settings = _app_settings()
    assert settings["PYTHON_ENABLE_INIT_INDEXING"] == "1"
    assert settings["FUNCTIONS_REQUEST_BODY_SIZE_LIMIT"] == Expr("string((maxRequestMB + 1) * 1048576)")
    assert settings["DICOMWEB_MAX_REQUEST_MB"] == Expr("string(maxRequestMB)")
    assert "FUNCTIONS_WORKER_RUNTIME" not in settings, "Flex Consumption sets the runtime in functionAppConfig"
    assert app.value["properties"]["siteConfig"]["http20Enabled"] is True, "browsers fetch tiles over HTTP/2"


def test_http_concurrency_comes_from_the_scale_file_and_always_ready_instances_are_optional() -> None:
    """One number for Azure and ``dicomweb serve``: the Bicep's default per-instance concurrency is infra/scale.json's
    (shapes as in Azure-Samples/azure-functions-flex-consumption-samples and the Flex Consumption docs)."""
    scale = json.loads(SCALE_JSON.read_text())
    assert isinstance(scale["httpPerInstanceConcurrency"], int) and 1 <= scale["httpPerInstanceConcurrency"] <= 1000
    main = _file("main.bicep")
    declared = main.all("param")
    assert declared["httpPerInstanceConcurrency"].value == Expr(
        "loadJsonContent('scale.json').httpPerInstanceConcurrency")
    assert {"@minValue(1)", "@maxValue(1000)"} <= set(declared["httpPerInstanceConcurrency"].decorators)
    assert declared["alwaysReady"].value == 0 and "@minValue(0)" in declared["alwaysReady"].decorators
    given = main.all("module")["app"].value["params"]
    assert given["httpPerInstanceConcurrency"] == Expr("httpPerInstanceConcurrency")
    assert given["alwaysReady"] == Expr("alwaysReady")
    app = _one(_file("modules/functionapp.bicep"), "Microsoft.Web/sites")
    assert app.value["properties"]["functionAppConfig"]["scaleAndConcurrency"] == {
        "alwaysReady": Expr("alwaysReady == 0 ? [] : [\n          {\n            name: 'http'\n"
                            "            instanceCount: alwaysReady\n          }\n        ]"),
        "instanceMemoryMB": Expr("instanceMemoryMB"),
        "maximumInstanceCount": Expr("maximumInstanceCount"),
        "triggers": {"http": {"perInstanceConcurrency": Expr("httpPerInstanceConcurrency")}},
    }


def test_ftp_and_basic_auth_publishing_are_off() -> None:
    template = _file("modules/functionapp.bicep")
    app = _one(template, "Microsoft.Web/sites")
    assert app.value["properties"]["siteConfig"]["ftpsState"] == "Disabled"
    assert app.value["properties"]["httpsOnly"] is True
    (policies,) = template.resources("Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    assert policies.loop is not None and "['ftp', 'scm']" in policies.loop
    assert policies.value == {"parent": Expr("app"), "name": Expr("protocol"), "properties": {"allow": False}}


def test_the_public_base_url_defaults_to_the_app_host_name_under_the_route_prefix() -> None:
    """RetrieveURL and BulkDataURI must not depend on the Host and scheme the worker sees behind the platform's
    proxy. The site's default host name is assigned by the platform (regional names carry a hash), so the
    settings are a resource of their own, written once the site exists."""
    prefix = json.loads((ROOT / "host.json").read_text())["extensions"]["http"]["routePrefix"]
    assert _app_settings()["DICOMWEB_PUBLIC_BASE_URL"] == Expr(
        f"empty(publicBaseUrl) ? 'https://${{app.properties.defaultHostName}}/{prefix}' : publicBaseUrl")
    assert _file("main.bicep").all("param")["publicBaseUrl"].value == ""


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
    assert account["publicNetworkAccess"] == "Enabled" and account["networkAcls"]["defaultAction"] == "Allow", \
        "upload clients write through a SAS and the app has no virtual network: the network posture is explicit"
    service = _one(template, "Microsoft.Storage/storageAccounts/blobServices").value["properties"]
    assert service["deleteRetentionPolicy"]["enabled"] is True
    assert service["lastAccessTimeTrackingPolicy"]["enable"] is True
    containers = _one(template, "Microsoft.Storage/storageAccounts/blobServices/containers")
    assert containers.loop is not None and "stagingContainer" in containers.loop
    assert containers.value["properties"] == {"publicAccess": "None"}


def test_the_bicep_creates_every_container_queue_and_cosmos_container_the_code_uses() -> None:
    """In Azure the service creates nothing at start (control-plane calls are rate-limited): the Bicep owns it all."""
    defaults = Settings()
    names = {name: d.value for name, d in _file("main.bicep").all("var").items()}
    assert (names["instanceContainer"], names["sidecarContainer"], names["stagingContainer"]) == (
        defaults.instance_container, defaults.sidecar_container, defaults.staging_container)
    assert (names["cosmosDatabase"], names["cosmosContainer"]) == (defaults.cosmos_database, defaults.cosmos_container)
    assert (names["jobsQueue"], names["blobEventsQueue"]) == (defaults.jobs_queue, defaults.blob_events_queue)
    storage = _file("modules/storage.bicep")
    containers = _one(storage, "Microsoft.Storage/storageAccounts/blobServices/containers")
    assert ("for container in [instanceContainer, sidecarContainer, stagingContainer, deploymentContainer, "
            "deadLetterContainer]:") in (containers.loop or "")
    queues = _one(storage, "Microsoft.Storage/storageAccounts/queueServices/queues")
    assert queues.loop is not None and (f"[jobsQueue, '${{jobsQueue}}{POISON_SUFFIX}', blobEventsQueue, "
                                        f"'${{blobEventsQueue}}{POISON_SUFFIX}']") in queues.loop
    given = _file("main.bicep").all("module")["storage"].value["params"]
    assert {name: given[name] for name in ("instanceContainer", "sidecarContainer", "stagingContainer", "jobsQueue",
                                           "blobEventsQueue", "deadLetterContainer")} == {
        name: Expr(name) for name in ("instanceContainer", "sidecarContainer", "stagingContainer", "jobsQueue",
                                      "blobEventsQueue", "deadLetterContainer")}
    cosmos = _file("modules/cosmos.bicep")
    assert _one(cosmos, "Microsoft.DocumentDB/databaseAccounts/sqlDatabases").value["name"] == Expr("databaseName")
    index = _one(cosmos, "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers")
    assert index.value["name"] == Expr("containerName")


def test_the_bicep_deploys_the_lifecycle_policy_file() -> None:
    """One policy: the JSON file the local tools read is what the Bicep deploys, less the archive rules when
    archiving is off."""
    template = _file("modules/storage.bicep")
    policy = _one(template, "Microsoft.Storage/storageAccounts/managementPolicies")
    assert policy.value["name"] == "default"
    assert policy.value["properties"] == {"policy": {"rules": Expr("lifecycleRules")}}
    variables = template.all("var")
    assert variables["lifecyclePolicy"].value == Expr(
        "loadJsonContent('../../dicomweb/storage/lifecycle-policy.json', '$.policy')")
    assert (INFRA / "modules" / "../../dicomweb/storage/lifecycle-policy.json").resolve() == LIFECYCLE_JSON
    assert variables["lifecycleRules"].value == Expr(
        "filter(lifecyclePolicy.rules, rule => archive || !contains(rule.definition.actions.baseBlob, 'tierToArchive'))")
    assert _file("main.bicep").all("module")["storage"].value["params"]["archive"] == Expr("archive")


def test_every_lifecycle_rule_is_one_the_api_accepts() -> None:
    policy = json.loads(LIFECYCLE_JSON.read_text())["policy"]
    service = _one(_file("modules/storage.bicep"), "Microsoft.Storage/storageAccounts/blobServices").value
    tracking = service["properties"]["lastAccessTimeTrackingPolicy"]["enable"] is True
    names = {name: d.value for name, d in _file("main.bicep").all("var").items()}
    containers = {names["instanceContainer"], names["sidecarContainer"], names["stagingContainer"], "app-package"}
    assert _file("main.bicep").all("module")["storage"].value["params"]["deploymentContainer"] == "app-package"
    assert policy_errors(policy, containers, tracking) == []
    assert policy_errors(without_archive(policy), containers, tracking) == []
    assert "archiveUnreadInstances" not in {rule["name"] for rule in without_archive(policy)["rules"]}


def test_the_policy_the_bicep_deployed_before_is_refused() -> None:
    """``azd up`` failed on this rule: the validator says why."""
    errors = policy_errors({"rules": [OLD_TIERING_RULE]}, CONTAINERS, last_access_tracking=True)
    assert errors == [
        "tier-unread-instances: name 'tier-unread-instances': 1 to 256 letters and digits",
        ("tier-unread-instances: baseBlob.tierToArchive: daysAfterLastTierChangeGreaterThan only together with "
         "daysAfterModificationGreaterThan, not ['daysAfterLastAccessTimeGreaterThan']"),
    ]


def _valid_rule() -> dict[str, Any]:
    return {"name": "rule1", "enabled": True, "type": "Lifecycle", "definition": {
        "filters": {"blobTypes": ["blockBlob"], "prefixMatch": ["dicom-instances/"],
                    "blobIndexMatch": [{"name": TIER_TAG, "op": "==", "value": AUTO}]},
        "actions": {"baseBlob": {"enableAutoTierToHotFromCool": True,
                                 "tierToCool": {"daysAfterLastAccessTimeGreaterThan": 30},
                                 "tierToArchive": {"daysAfterModificationGreaterThan": 90,
                                                   "daysAfterLastTierChangeGreaterThan": 7}},
                    "snapshot": {"delete": {"daysAfterCreationGreaterThan": 30}}}}}


def _set(path: str, value: Any) -> Any:
    def mutate(rule: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = rule
        for key in parents:
            node = node[key]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return mutate


@pytest.mark.parametrize(("mutate", "expected"), [
    (_set("name", "rule-1"), "1 to 256 letters and digits"),
    (_set("name", "r" * 257), "1 to 256 letters and digits"),
    (_set("type", "Delete"), "the only type is Lifecycle"),
    (_set("definition.filters.blobTypes", KeyError), "filters.blobTypes: required"),
    (_set("definition.filters.blobTypes", ["pageBlob"]), "filters.blobTypes: required"),
    (_set("definition.filters.blobTypes", ["appendBlob"]), "appendBlob takes the delete action only"),
    (_set("definition.filters.prefixMatch", [f"dicom-instances/{i}" for i in range(11)]), "at most 10 prefixes"),
    (_set("definition.filters.prefixMatch", ["instances/"]), "does not start with a container name"),
    (_set("definition.filters.blobIndexMatch", [{"name": f"t{i}", "op": "==", "value": "v"} for i in range(11)]),
     "at most 10 tag conditions"),
    (_set("definition.filters.blobIndexMatch", [{"name": TIER_TAG, "op": "!=", "value": AUTO}]), "only == is supported"),
    (_set("definition.filters.blobIndexMatch", [{"name": "", "op": "==", "value": AUTO}]), "tag name ''"),
    (_set("definition.filters.blobIndexMatch", [{"name": "t" * 129, "op": "==", "value": AUTO}]), "1 to 128"),
    (_set("definition.filters.blobIndexMatch", [{"name": TIER_TAG, "op": "==", "value": "v" * 257}]), "0 to 256"),
    (_set("definition.filters.blobIndexMatch", [{"name": "tier?", "op": "==", "value": AUTO}]), "tag name 'tier?'"),
    (_set("definition.actions.baseBlob.tierToCool", {"daysAfterLastAccessTimeGreaterThan": 30,
                                                     "daysAfterModificationGreaterThan": 30}), "exactly one of"),
    (_set("definition.actions.baseBlob.tierToCool", {}), "exactly one of"),
    (_set("definition.actions.baseBlob.tierToCool", {"daysAfterModificationGreaterThan": 30}),
     "enableAutoTierToHotFromCool: only with tierToCool.daysAfterLastAccessTimeGreaterThan"),
    (_set("definition.actions.baseBlob.tierToCool", KeyError), "enableAutoTierToHotFromCool: only with"),
    (_set("definition.actions.baseBlob.tierToCool", {"daysAfterLastAccessTimeGreaterThan": 30,
                                                     "daysAfterLastTierChangeGreaterThan": 7}),
     "daysAfterLastTierChangeGreaterThan is accepted on tierToArchive only"),
    (_set("definition.actions.baseBlob.tierToArchive", {"daysAfterCreationGreaterThan": 90,
                                                        "daysAfterLastTierChangeGreaterThan": 7}),
     "only together with daysAfterModificationGreaterThan"),
    (_set("definition.actions.baseBlob.tierToArchive", {"daysAfterModificationGreaterThan": -1}), "whole number"),
    (_set("definition.actions.baseBlob.tierToArchive", {"daysAfterModificationGreaterThan": True}), "whole number"),
    (_set("definition.actions.baseBlob.tierToHot", {"daysAfterModificationGreaterThan": 1}), "takes no action"),
    (_set("definition.actions.snapshot.delete", {"daysAfterModificationGreaterThan": 30}),
     "exactly one of daysAfterCreationGreaterThan"),
    (_set("definition.actions.snapshot.enableAutoTierToHotFromCool", True), "on baseBlob only"),
    (_set("definition.actions", {"baseBlob": {}}), "at least one action"),
    (_set("definition.actions.previous", {}), "no target 'previous'"),
])
def test_the_validator_refuses_what_the_api_refuses(mutate: Any, expected: str) -> None:
    assert policy_errors({"rules": [_valid_rule()]}, CONTAINERS, last_access_tracking=True) == []
    rule = copy.deepcopy(_valid_rule())
    mutate(rule)
    errors = policy_errors({"rules": [rule]}, CONTAINERS, last_access_tracking=True)
    assert any(expected in error for error in errors), errors


def test_the_validator_checks_the_policy_as_a_whole() -> None:
    one = _valid_rule()
    assert policy_errors({"rules": []}, CONTAINERS, True) == ["1 to 100 rules, not 0"]
    many = [dict(copy.deepcopy(one), name=f"rule{i}") for i in range(101)]
    assert policy_errors({"rules": many}, CONTAINERS, True) == ["1 to 100 rules, not 101"]
    assert policy_errors({"rules": [one, copy.deepcopy(one)]}, CONTAINERS, True) == [
        "rule name 'rule1' is not unique"]
    assert policy_errors({"rules": [one]}, CONTAINERS, last_access_tracking=False) == [
        ("rule1: baseBlob.tierToCool: daysAfterLastAccessTimeGreaterThan needs the blob service's "
         "lastAccessTimeTrackingPolicy enabled")]


def test_unread_auto_instances_tier_down_and_pinned_ones_never_do() -> None:
    policy = json.loads(LIFECYCLE_JSON.read_text())["policy"]
    rules = {rule["name"]: rule["definition"] for rule in policy["rules"]}
    instance = f"{Settings().instance_container}/1.2/3.4/5.6/0123456789abcdef.dcm"
    assert rules_for(policy, instance, {TIER_TAG: AUTO}) == ["tierUnreadInstances", "archiveUnreadInstances"]
    assert rules_for(policy, instance, {TIER_TAG: HOT}) == []
    assert rules_for(policy, instance, {}) == [], "an untagged blob stays where it is"
    sidecar = f"{Settings().sidecar_container}/1.2/3.4/5.6/0123456789abcdef.json"
    assert rules_for(policy, sidecar, {TIER_TAG: AUTO}) == [], "sidecars stay hot, whatever their tag"
    tiering = rules["tierUnreadInstances"]["actions"]["baseBlob"]
    archiving = rules["archiveUnreadInstances"]["actions"]["baseBlob"]
    days = (tiering["tierToCool"][LAST_ACCESS], tiering["tierToCold"][LAST_ACCESS], archiving["tierToArchive"][LAST_ACCESS])
    assert days == (30, 90, 365)
    assert tiering["enableAutoTierToHotFromCool"] is True, "a read of a Cool blob brings it back to Hot"
    assert {tag["name"] for rule in rules.values() for tag in rule["filters"].get("blobIndexMatch", [])} == {TIER_TAG}


def test_a_rehydrated_slide_is_never_archived_again_by_the_policy() -> None:
    """Rehydrating updates neither the last-access nor the last-modified time, so an ``auto`` blob would go back to
    Archive at the next daily run; re-tagged ``rehydrated`` first, it ages to Cool and Cold only."""
    policy = json.loads(LIFECYCLE_JSON.read_text())["policy"]
    instance = f"{Settings().instance_container}/1.2/3.4/5.6/0123456789abcdef.dcm"
    assert rules_for(policy, instance, {TIER_TAG: REHYDRATED}) == ["tierUnreadRehydrated"]
    (rule,) = [rule for rule in policy["rules"] if rule["name"] == "tierUnreadRehydrated"]
    actions = rule["definition"]["actions"]["baseBlob"]
    assert "tierToArchive" not in actions
    assert (actions["tierToCool"], actions["tierToCold"]) == ({LAST_ACCESS: 30}, {LAST_ACCESS: 90})


def test_staged_uploads_expire_and_reindex_records_stay() -> None:
    policy = json.loads(LIFECYCLE_JSON.read_text())["policy"]
    staging = Settings().staging_container
    session = Session(id="0" * 32, size=1, block_size=1, study=None, created="", expires="", generation="g")
    for name in (session.data, session.record_name, session.frames_name):
        assert rules_for(policy, f"{staging}/{name}", {}) == ["expireStagedUploads"], name
    for name in (f"{RUNS}run1.json", f"{RUNS}run1/1.2.3.json"):
        assert rules_for(policy, f"{staging}/{name}", {}) == [], f"{name}: a reindex operation record is kept"
    (expiry,) = [rule["definition"]["actions"]["baseBlob"]["delete"] for rule in policy["rules"]
                 if rule["name"] == "expireStagedUploads"]
    longest = Settings().upload_session_seconds + STUCK_SECONDS
    assert expiry["daysAfterModificationGreaterThan"] * 86400 >= longest, \
        "nothing is deleted that the service's own cleanup would not have removed"


def test_zone_redundant_storage_with_archiving_is_refused_at_deployment() -> None:
    """Archive does not exist on ZRS, GZRS and RA-GZRS: the rule would be accepted and never run."""
    main = _file("main.bicep")
    declared = main.all("param")
    allowed = re.findall(r"'(Standard_\w+)'", next(d for d in declared["storageSku"].decorators if "allowed" in d))
    assert {sku for sku in allowed if "ZRS" in sku} == {"Standard_ZRS", "Standard_GZRS", "Standard_RAGZRS"}
    assert declared["archiveUnreadInstances"].value is True
    variables = main.all("var")
    assert variables["archive"].value == Expr(
        "archiveUnreadInstances && contains(storageSku, 'ZRS') ? fail(noArchiveTier) : archiveUnreadInstances")
    storage_skus = _file("modules/storage.bicep").all("param")["sku"].decorators
    assert [d for d in storage_skus if "allowed" in d] == [d for d in declared["storageSku"].decorators
                                                            if "allowed" in d]


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
    assert queues.loop is not None and "for queue in [jobsQueue, '${jobsQueue}-poison'," in queues.loop
    assert storage.all("output")["jobsQueue"].value == Expr("queues[0].name")
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


# --- Event Grid: the instance blobs' tier events, checked against the event-subscription API's documented rules ---

#: Writable properties of an event subscription (Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15:
#: EventSubscriptionProperties, less the read-only provisioningState and topic).
SUBSCRIPTION_PROPERTIES = {"deadLetterDestination", "deadLetterWithResourceIdentity", "deliveryWithResourceIdentity",
                           "destination", "eventDeliverySchema", "expirationTimeUtc", "filter", "labels",
                           "retryPolicy"}
DELIVERY_SCHEMAS = {"CloudEventSchemaV1_0", "CustomInputSchema", "EventGridSchema"}
FILTER_PROPERTIES = {"advancedFilters", "enableAdvancedFilteringOnArrays", "includedEventTypes",
                     "isSubjectCaseSensitive", "subjectBeginsWith", "subjectEndsWith"}
ENDPOINT_TYPES = {"AzureFunction", "EventHub", "HybridConnection", "MonitorAlert", "NamespaceTopic",
                  "ServiceBusQueue", "ServiceBusTopic", "StorageQueue", "WebHook"}
STORAGE_QUEUE_PROPERTIES = {"resourceId", "queueName", "queueMessageTimeToLiveInSeconds"}
STORAGE_BLOB_PROPERTIES = {"resourceId", "blobContainerName"}
IDENTITY_TYPES = {"SystemAssigned", "UserAssigned"}
RETRY_LIMITS = {"maxDeliveryAttempts": 30, "eventTimeToLiveInMinutes": 1440}
#: What a system topic of type Microsoft.Storage.StorageAccounts publishes (Azure Blob Storage as an Event Grid source).
STORAGE_EVENT_TYPES = {f"Microsoft.Storage.{name}" for name in (
    "BlobCreated", "BlobDeleted", "BlobRenamed", "BlobTierChanged", "AsyncOperationInitiated", "DirectoryCreated",
    "DirectoryRenamed", "DirectoryDeleted", "BlobInventoryPolicyCompleted", "LifecyclePolicyCompleted",
    "StorageTaskQueued", "StorageTaskCompleted", "StorageTaskAssignmentQueued", "StorageTaskAssignmentCompleted")}
#: Set Blob Tier completed (a rehydration in place ends with one too); a rehydration from Archive started.
TIER_EVENTS = ["Microsoft.Storage.BlobTierChanged", "Microsoft.Storage.AsyncOperationInitiated"]
QUEUE_MESSAGE_SENDER = "c6a89b2d-59bc-44d0-9896-0f6e12d7b80a"
BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"


def _identity_errors(where: str, identity: Any, topic_identity: str | None) -> list[str]:
    if not isinstance(identity, dict) or identity.get("type") not in IDENTITY_TYPES:
        return [f"{where}.identity: type {' or '.join(sorted(IDENTITY_TYPES))}"]
    errors = [f"{where}.identity: no property {name!r}" for name in set(identity) - {"type", "userAssignedIdentity"}]
    if identity["type"] == "UserAssigned" and not identity.get("userAssignedIdentity"):
        errors.append(f"{where}.identity: UserAssigned names its userAssignedIdentity")
    if identity["type"] == "SystemAssigned" and "SystemAssigned" not in (topic_identity or ""):
        errors.append(f"{where}.identity: SystemAssigned uses the topic's system-assigned identity, which it lacks")
    return errors


def _queue_destination_errors(where: str, destination: Any) -> list[str]:
    if not isinstance(destination, dict) or destination.get("endpointType") not in ENDPOINT_TYPES:
        return [f"{where}: endpointType one of {sorted(ENDPOINT_TYPES)}"]
    if destination["endpointType"] != "StorageQueue":
        return []  # the other destinations' properties are not checked here
    properties = destination.get("properties")
    if not isinstance(properties, dict):
        return [f"{where}.properties: resourceId and queueName"]
    errors = [f"{where}.properties: no property {name!r}" for name in set(properties) - STORAGE_QUEUE_PROPERTIES]
    errors += [f"{where}.properties.{name}: required" for name in ("resourceId", "queueName") if not properties.get(name)]
    ttl = properties.get("queueMessageTimeToLiveInSeconds", -1)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or (ttl <= 0 and ttl != -1):
        errors.append(f"{where}.properties.queueMessageTimeToLiveInSeconds: -1 (never expires) or a positive "
                      f"number of seconds, not {ttl!r}")
    return errors


def _dead_letter_errors(where: str, destination: Any) -> list[str]:
    if not isinstance(destination, dict) or destination.get("endpointType") != "StorageBlob":
        return [f"{where}: endpointType StorageBlob (the only dead-letter destination)"]
    properties = destination.get("properties")
    if not isinstance(properties, dict):
        return [f"{where}.properties: resourceId and blobContainerName"]
    errors = [f"{where}.properties: no property {name!r}" for name in set(properties) - STORAGE_BLOB_PROPERTIES]
    return errors + [f"{where}.properties.{name}: required" for name in sorted(STORAGE_BLOB_PROPERTIES)
                     if not properties.get(name)]


def _with_identity_errors(properties: dict[str, Any], name: str, target: str, topic_identity: str | None) -> list[str]:
    """``deliveryWithResourceIdentity`` / ``deadLetterWithResourceIdentity``: an identity and a destination."""
    given = properties[name]
    if not isinstance(given, dict) or set(given) != {"identity", target}:
        return [f"{name}: identity and {target}"]
    check = _queue_destination_errors if target == "destination" else _dead_letter_errors
    return _identity_errors(name, given["identity"], topic_identity) + check(f"{name}.{target}", given[target])


def subscription_errors(properties: Any, topic_identity: str | None) -> list[str]:
    """What the event-subscription API refuses, or documents as unsupported, in the ``properties`` of an event
    subscription on a storage account's system topic (empty: nothing). ``topic_identity`` is the topic's identity type.

    A table-driven reading of the ARM reference of Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15
    (learn.microsoft.com/azure/templates/microsoft.eventgrid/2025-02-15/systemtopics/eventsubscriptions, and its
    generated types in Azure/bicep-types-az: EventSubscriptionProperties; ``destination`` delivers with Event Grid's
    identity, ``deliveryWithResourceIdentity`` with the topic's; DeadLetterDestination's one endpointType,
    StorageBlob, with resourceId and blobContainerName; StorageQueueEventSubscriptionDestinationProperties:
    queueMessageTimeToLiveInSeconds "cannot be zero or negative with the exception of using -1"; EventSubscriptionIdentity
    SystemAssigned or UserAssigned with its userAssignedIdentity; EventSubscriptionFilter's subjectBeginsWith and
    subjectEndsWith: "Wildcard characters are not supported"), Event Grid's "Set dead-letter location and retry
    policy" (learn.microsoft.com/azure/event-grid/manage-event-delivery: event time-to-live "an integer from 1 to
    1440", max retries "an integer from 1 to 30") and "Azure Blob Storage as an Event Grid source" (the event types).
    """
    if not isinstance(properties, dict):
        return ["properties: an object"]
    errors = [f"no property {name!r}" for name in set(properties) - SUBSCRIPTION_PROPERTIES]
    delivery = [name for name in ("destination", "deliveryWithResourceIdentity") if name in properties]
    if len(delivery) != 1:
        errors.append(f"exactly one of destination and deliveryWithResourceIdentity, not {delivery or 'none'}")
    if "destination" in properties:
        errors += _queue_destination_errors("destination", properties["destination"])
    if "deliveryWithResourceIdentity" in properties:
        errors += _with_identity_errors(properties, "deliveryWithResourceIdentity", "destination", topic_identity)
    dead = [name for name in ("deadLetterDestination", "deadLetterWithResourceIdentity") if name in properties]
    if len(dead) > 1:
        errors.append("at most one of deadLetterDestination and deadLetterWithResourceIdentity")
    if "deadLetterDestination" in properties:
        errors += _dead_letter_errors("deadLetterDestination", properties["deadLetterDestination"])
    if "deadLetterWithResourceIdentity" in properties:
        errors += _with_identity_errors(properties, "deadLetterWithResourceIdentity", "deadLetterDestination",
                                        topic_identity)
    if properties.get("eventDeliverySchema", "EventGridSchema") not in DELIVERY_SCHEMAS:
        errors.append(f"eventDeliverySchema: one of {sorted(DELIVERY_SCHEMAS)}")
    retry = properties.get("retryPolicy", {})
    if not isinstance(retry, dict):
        return errors + ["retryPolicy: an object"]
    errors += [f"retryPolicy: no property {name!r}" for name in set(retry) - set(RETRY_LIMITS)]
    for name, most in RETRY_LIMITS.items():
        value = retry.get(name, most)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
            errors.append(f"retryPolicy.{name}: a whole number from 1 to {most}, not {value!r}")
    event_filter = properties.get("filter", {})
    if not isinstance(event_filter, dict):
        return errors + ["filter: an object"]
    errors += [f"filter: no property {name!r}" for name in set(event_filter) - FILTER_PROPERTIES]
    types = event_filter.get("includedEventTypes")
    if types is not None and (not isinstance(types, list) or not types or not set(types) <= STORAGE_EVENT_TYPES):
        errors.append(f"filter.includedEventTypes: event types a storage account publishes, not {types!r}")
    for name in ("subjectBeginsWith", "subjectEndsWith"):
        if not isinstance(event_filter.get(name, ""), str) or "*" in event_filter.get(name, ""):
            errors.append(f"filter.{name}: a literal path (wildcards are not supported)")
    if not isinstance(event_filter.get("isSubjectCaseSensitive", False), bool):
        errors.append("filter.isSubjectCaseSensitive: true or false")
    return errors


def _interpolate(expr: Expr, values: dict[str, str]) -> str:
    """The value of a Bicep string ``'...${name}...'`` given its names' values."""
    assert expr.text.startswith("'") and expr.text.endswith("'"), expr
    return re.sub(r"\$\{(\w+)\}", lambda match: values[match.group(1)], expr.text[1:-1])


def _loop_items(loop: str | None) -> list[str]:
    """The items of a ``for x in [a, b, ...]`` loop over a literal array, as source text."""
    assert loop is not None
    return [item.strip() for item in loop[loop.index("[") + 1:loop.index("]")].split(",")]


def _tier_events() -> tuple[BicepFile, dict[str, Any]]:
    events = _file("modules/events.bicep")
    return events, _one(events, "Microsoft.EventGrid/systemTopics/eventSubscriptions").value


def _resolved_subscription() -> dict[str, Any]:
    """The subscription's properties with its variables and the instance container main.bicep deploys filled in."""
    events, subscription = _tier_events()
    resolved = copy.deepcopy(subscription["properties"])
    event_filter = resolved["filter"]
    assert event_filter["includedEventTypes"] == Expr("tierEvents")
    event_filter["includedEventTypes"] = events.all("var")["tierEvents"].value
    container = _file("main.bicep").all("var")["instanceContainer"].value
    event_filter["subjectBeginsWith"] = _interpolate(event_filter["subjectBeginsWith"], {"instanceContainer": container})
    return resolved


def _valid_subscription() -> dict[str, Any]:
    identity = {"type": "SystemAssigned"}
    return {
        "eventDeliverySchema": "EventGridSchema",
        "filter": {"includedEventTypes": list(TIER_EVENTS), "subjectBeginsWith": "/blobServices/default/containers/c/",
                   "subjectEndsWith": ".dcm", "isSubjectCaseSensitive": True},
        "deliveryWithResourceIdentity": {"identity": dict(identity), "destination": {
            "endpointType": "StorageQueue",
            "properties": {"resourceId": "/subscriptions/s/x", "queueName": "q", "queueMessageTimeToLiveInSeconds": -1}}},
        "retryPolicy": {"maxDeliveryAttempts": 30, "eventTimeToLiveInMinutes": 1440},
        "deadLetterWithResourceIdentity": {"identity": dict(identity), "deadLetterDestination": {
            "endpointType": "StorageBlob", "properties": {"resourceId": "/subscriptions/s/x", "blobContainerName": "d"}}},
    }


@pytest.mark.parametrize(("mutate", "expected"), [
    (_set("destination", {"endpointType": "StorageQueue", "properties": {"resourceId": "r", "queueName": "q"}}),
     "exactly one of destination and deliveryWithResourceIdentity"),
    (_set("deliveryWithResourceIdentity", KeyError), "exactly one of destination and deliveryWithResourceIdentity"),
    (_set("deadLetterDestination", {"endpointType": "StorageBlob", "properties": {"resourceId": "r",
                                                                                 "blobContainerName": "d"}}),
     "at most one of deadLetterDestination and deadLetterWithResourceIdentity"),
    (_set("retryPolicy.maxDeliveryAttempts", 31), "retryPolicy.maxDeliveryAttempts: a whole number from 1 to 30"),
    (_set("retryPolicy.maxDeliveryAttempts", 0), "from 1 to 30"),
    (_set("retryPolicy.eventTimeToLiveInMinutes", 1441), "eventTimeToLiveInMinutes: a whole number from 1 to 1440"),
    (_set("retryPolicy.eventTimeToLiveInMinutes", "600"), "from 1 to 1440"),
    (_set("retryPolicy.eventTimeToLive", "600"), "retryPolicy: no property 'eventTimeToLive'"),
    (_set("deliveryWithResourceIdentity.destination.properties.queueMessageTimeToLiveInSeconds", 0),
     "-1 (never expires) or a positive number of seconds"),
    (_set("deliveryWithResourceIdentity.destination.properties.queueMessageTimeToLiveInSeconds", -2), "not -2"),
    (_set("deliveryWithResourceIdentity.destination.properties.queueName", KeyError), "queueName: required"),
    (_set("deliveryWithResourceIdentity.destination.endpointType", "Queue"), "endpointType one of"),
    (_set("deliveryWithResourceIdentity.identity", {"type": "UserAssigned"}), "names its userAssignedIdentity"),
    (_set("deliveryWithResourceIdentity.identity", {"type": "None"}), "type SystemAssigned or UserAssigned"),
    (_set("deadLetterWithResourceIdentity.deadLetterDestination.endpointType", "StorageQueue"),
     "endpointType StorageBlob"),
    (_set("deadLetterWithResourceIdentity.deadLetterDestination.properties.blobContainerName", KeyError),
     "blobContainerName: required"),
    (_set("filter.includedEventTypes", ["Microsoft.Storage.BlobTierChange"]), "event types a storage account"),
    (_set("filter.includedEventTypes", []), "event types a storage account"),
    (_set("filter.subjectEndsWith", "*.dcm"), "wildcards are not supported"),
    (_set("filter.subjectPrefix", "/blobServices/"), "filter: no property 'subjectPrefix'"),
    (_set("eventDeliverySchema", "EventGridEvent"), "eventDeliverySchema: one of"),
])
def test_the_subscription_validator_refuses_what_the_api_refuses(mutate: Any, expected: str) -> None:
    assert subscription_errors(_valid_subscription(), "SystemAssigned") == []
    subscription = _valid_subscription()
    mutate(subscription)
    errors = subscription_errors(subscription, "SystemAssigned")
    assert any(expected in error for error in errors), errors


def test_identity_delivery_needs_the_topics_own_identity() -> None:
    assert subscription_errors(_valid_subscription(), None) == [
        ("deliveryWithResourceIdentity.identity: SystemAssigned uses the topic's system-assigned identity, "
         "which it lacks"),
        ("deadLetterWithResourceIdentity.identity: SystemAssigned uses the topic's system-assigned identity, "
         "which it lacks")]


def test_the_tier_event_subscription_is_one_the_api_accepts() -> None:
    events, _ = _tier_events()
    topic = _one(events, "Microsoft.EventGrid/systemTopics")
    assert topic.type == "Microsoft.EventGrid/systemTopics@2025-02-15"
    assert _one(events, "Microsoft.EventGrid/systemTopics/eventSubscriptions").type == \
        "Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15"
    assert subscription_errors(_resolved_subscription(), topic.value["identity"]["type"]) == []


def test_a_system_topic_on_the_dicom_account_delivers_to_the_queue_the_app_reads() -> None:
    events, subscription = _tier_events()
    topic = _one(events, "Microsoft.EventGrid/systemTopics")
    assert topic.value["properties"] == {"source": Expr("account.id"), "topicType": "Microsoft.Storage.StorageAccounts"}
    assert topic.value["location"] == Expr("location") and subscription["parent"] == Expr("topic")
    # The account, its queue and its dead-letter container are storage.bicep's: referenced, never redeclared here.
    references = {d.name: d for d in events.all("resource").values() if d.type.startswith("Microsoft.Storage/")}
    assert set(references) == {"account", "queueService", "queue", "blobService", "deadLetters"}
    assert all(d.existing for d in references.values())
    assert references["account"].value == {"name": Expr("storageAccountName")}
    assert references["queueService"].value == {"parent": Expr("account"), "name": "default"}
    assert references["queue"].value == {"parent": Expr("queueService"), "name": Expr("blobEventsQueue")}
    properties = subscription["properties"]
    assert "destination" not in properties, "delivered with the topic's identity, never Event Grid's"
    destination = properties["deliveryWithResourceIdentity"]["destination"]
    assert destination["endpointType"] == "StorageQueue"
    assert (destination["properties"]["resourceId"], destination["properties"]["queueName"]) == (
        Expr("account.id"), Expr("queue.name"))
    # main.bicep: the topic's account and queue are the storage module's, and the app reads that queue.
    main = _file("main.bicep")
    modules = main.all("module")
    given = modules["events"].value["params"]
    assert (given["storageAccountName"], given["location"]) == (Expr("storage.outputs.name"), Expr("location"))
    assert given["blobEventsQueue"] == modules["app"].value["params"]["blobEventsQueue"] == Expr(
        "storage.outputs.blobEventsQueue")
    storage = _file("modules/storage.bicep")
    queues = _one(storage, "Microsoft.Storage/storageAccounts/queueServices/queues")
    assert storage.all("output")["blobEventsQueue"].value == Expr("queues[2].name")
    assert _loop_items(queues.loop)[2:] == ["blobEventsQueue", f"'${{blobEventsQueue}}{POISON_SUFFIX}'"], \
        "the queue and the poison queue the host moves a message to after maxDequeueCount"
    assert main.all("var")["blobEventsQueue"].value == Settings().blob_events_queue
    assert _app_settings()["DICOMWEB_BLOB_EVENTS_QUEUE"] == Expr("blobEventsQueue")
    assert main.all("output")["DICOMWEB_BLOB_EVENTS_QUEUE"].value == Expr("storage.outputs.blobEventsQueue")
    # The app receives and deletes the messages with its Storage Queue Data Contributor role on the whole account.
    (app_queues,) = [a for a in storage.resources("Microsoft.Authorization/roleAssignments")
                     if a.value["properties"]["principalId"] == Expr("identityPrincipalId")
                     and "queueDataContributor" in a.value["properties"]["roleDefinitionId"].text]
    assert app_queues.value["scope"] == Expr("account")


def test_only_the_tier_events_of_the_instance_blobs_are_delivered() -> None:
    events, subscription = _tier_events()
    assert events.all("var")["tierEvents"].value == TIER_EVENTS
    event_filter = subscription["properties"]["filter"]
    assert event_filter["includedEventTypes"] == Expr("tierEvents")
    assert event_filter["isSubjectCaseSensitive"] is True and "advancedFilters" not in event_filter
    # The container the filter names is the one the app setting DICOMWEB_INSTANCE_CONTAINER names.
    modules = _file("main.bicep").all("module")
    assert modules["events"].value["params"]["instanceContainer"] == Expr("storage.outputs.instanceContainer")
    assert modules["app"].value["params"]["instanceContainer"] == Expr("storage.outputs.instanceContainer")
    assert _app_settings()["DICOMWEB_INSTANCE_CONTAINER"] == Expr("instanceContainer")
    resolved = _resolved_subscription()["filter"]
    begins, ends = resolved["subjectBeginsWith"], resolved["subjectEndsWith"]
    assert begins == f"/blobServices/default/containers/{Settings().instance_container}/blobs/" and ends == ".dcm"

    def delivered(container: str, blob: str) -> bool:
        subject = f"/blobServices/default/containers/{container}/blobs/{blob}"
        return subject.startswith(begins) and subject.endswith(ends)

    location = Location("1.2.3", "1.2.3.4", "1.2.3.4.5", new_generation())
    defaults = Settings()
    assert delivered(defaults.instance_container, location.instance)
    for container, blob in [(defaults.sidecar_container, location.sidecar("json")),
                            (defaults.sidecar_container, location.instance),
                            (defaults.staging_container, f"{location.stem}.dcm"),
                            (defaults.instance_container, location.sidecar("thumbnail")),
                            (f"{defaults.instance_container}-old", location.instance),
                            ("dicom-events-deadletter", "INSTANCE-TIER-CHANGES/2026/1/1/0/x.dcm")]:
        assert not delivered(container, blob), (container, blob)


def test_undeliverable_events_are_retried_then_dead_lettered_to_a_container_of_their_own() -> None:
    events, subscription = _tier_events()
    properties = subscription["properties"]
    assert properties["retryPolicy"] == RETRY_LIMITS, "the documented maximums: 30 attempts within 24 hours"
    queue = properties["deliveryWithResourceIdentity"]["destination"]["properties"]
    assert queue["queueMessageTimeToLiveInSeconds"] == -1, "a tier change waits however long the app is stopped"
    assert "deadLetterDestination" not in properties, "dead-lettered with the topic's identity, never Event Grid's"
    dead_letter = properties["deadLetterWithResourceIdentity"]["deadLetterDestination"]
    assert dead_letter == {"endpointType": "StorageBlob", "properties": {
        "resourceId": Expr("account.id"), "blobContainerName": Expr("deadLetters.name")}}
    container = events.all("resource")["deadLetters"]
    assert container.existing and container.value == {"parent": Expr("blobService"), "name": Expr("deadLetterContainer")}
    assert events.all("resource")["blobService"].value == {"parent": Expr("account"), "name": "default"}
    main = _file("main.bicep")
    assert main.all("module")["events"].value["params"]["deadLetterContainer"] == Expr(
        "storage.outputs.deadLetterContainer")
    name = main.all("var")["deadLetterContainer"].value
    assert re.fullmatch(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}", name), "a valid container name"
    assert name not in {Settings().instance_container, Settings().sidecar_container, Settings().staging_container}
    storage = _file("modules/storage.bicep")
    containers = _one(storage, "Microsoft.Storage/storageAccounts/blobServices/containers")
    assert _loop_items(containers.loop)[4] == "deadLetterContainer"
    assert storage.all("output")["deadLetterContainer"].value == Expr("containers[4].name")


def test_the_topic_identity_gets_only_the_roles_delivery_and_dead_lettering_need_on_their_targets() -> None:
    events, subscription = _tier_events()
    topic = _one(events, "Microsoft.EventGrid/systemTopics")
    assert topic.value["identity"] == {"type": "SystemAssigned"}
    properties = subscription["properties"]
    assert properties["deliveryWithResourceIdentity"]["identity"] == {"type": "SystemAssigned"}
    assert properties["deadLetterWithResourceIdentity"]["identity"] == {"type": "SystemAssigned"}
    variables = events.all("var")
    assert (variables["queueMessageSender"].value, variables["blobDataContributor"].value) == (
        QUEUE_MESSAGE_SENDER, BLOB_DATA_CONTRIBUTOR)
    assignments = events.resources("Microsoft.Authorization/roleAssignments")
    granted = {}
    for assignment in assignments:
        value = assignment.value
        assert assignment.condition is None
        assert value["properties"]["principalId"] == Expr("topic.identity.principalId")
        assert value["properties"]["principalType"] == "ServicePrincipal"
        role = re.fullmatch(r"subscriptionResourceId\('Microsoft.Authorization/roleDefinitions', (\w+)\)",
                            value["properties"]["roleDefinitionId"].text).group(1)
        assert value["name"] == Expr(f"guid({value['scope'].text}.id, topic.id, {role})")
        granted[value["scope"].text] = role
    # The queue alone for sending, the dead-letter container alone for writing: the narrowest scopes these roles take.
    assert granted == {"queue": "queueMessageSender", "deadLetters": "blobDataContributor"}
    assert set(subscription["dependsOn"]) == {Expr(a.name) for a in assignments}, \
        "the roles exist before the first delivery (a refused one is not retried)"
    assert all("topic.identity" not in path.read_text() for path in BICEP_FILES if path.name != "events.bicep")


def test_storage_prices_reach_the_app_as_the_code_reads_them() -> None:
    main = _file("main.bicep")
    default = main.all("param")["storagePricesPerGbMonth"].value
    assert default == json.loads((ROOT / "local.settings.json.example").read_text())["Values"][
        "DICOMWEB_PRICES_PER_GB_MONTH"]
    assert Settings.from_env({"DICOMWEB_PRICES_PER_GB_MONTH": default}).prices_per_gb_month == DEFAULT_PRICES
    assert main.all("module")["app"].value["params"]["pricesPerGbMonth"] == Expr("storagePricesPerGbMonth")
    assert _app_settings()["DICOMWEB_PRICES_PER_GB_MONTH"] == Expr("pricesPerGbMonth")
    assert main.all("output")["DICOMWEB_PRICES_PER_GB_MONTH"].value == Expr("storagePricesPerGbMonth")


def test_checkov_finds_no_failed_check_and_every_suppression_has_a_reason(tmp_path: Path) -> None:
    """``checkov -d infra --framework bicep`` with no failed check; each inline ``checkov:skip`` gives its reason.

    checkov's Bicep parser (pycep) knows Bicep functions by name and ``fail`` is not among them, so on infra/ it
    reports main.bicep as not parsed; the scan runs on a copy where ``fail(`` reads ``string(`` so that every
    file is parsed and checked (main.bicep holds the resource group and the module calls).
    """
    assert CHECKOV.exists(), f"{CHECKOV} is missing: bash .ci/run installs checkov into its own environment"
    copied = tmp_path / "infra"
    shutil.copytree(INFRA, copied)
    replaced = 0
    for path in copied.rglob("*.bicep"):
        text = path.read_text()
        replaced += text.count("fail(")
        path.write_text(text.replace("fail(", "string("))
    assert replaced == 4, "fail() is called only in main.bicep's checks"
    result = subprocess.run([str(CHECKOV), "-d", str(copied), "--framework", "bicep", "--skip-download",
                             "--output", "json"], check=False, capture_output=True, text=True, timeout=240)
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout)
    summary = report["summary"]
    assert summary["parsing_errors"] == 0, report["results"].get("parsing_errors")
    assert summary["failed"] == 0, [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert summary["passed"] >= 20
    skipped = report["results"]["skipped_checks"]
    assert skipped and all(len(check["check_result"].get("suppress_comment", "").strip()) > 20 for check in skipped)


def test_host_json_matches_what_the_code_and_readme_assume() -> None:
    host = json.loads((ROOT / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensionBundle"] == {"id": "Microsoft.Azure.Functions.ExtensionBundle", "version": "[4.*, 5.0.0)"}
    assert host["extensions"]["http"]["routePrefix"] == "v1"
    assert _file("main.bicep").all("output")["SERVICE_API_URI"].value == Expr(
        "'https://${app.outputs.defaultHostName}/v1'")
    assert "/v1" in (ROOT / "README.md").read_text()
