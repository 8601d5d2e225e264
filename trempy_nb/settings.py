"""The task settings contract (docs/settings.md) as typed models.

One model validates every entry point (magics, widgets, CLI, AI assistant,
Python API). Names of modes are `Literal` types and the runtime lists are
derived from them with `get_args`, so widgets, validator and the AI tutorial
share one source of truth. This module is pure: the checks against a live
source live in `validation.py`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from trempy_nb.errors import SettingsError

ReplicationType = Literal["full_load", "cdc", "full_load_and_cdc"]
StartMode = Literal["reload", "continue"]
TransportName = Literal["local", "rabbitmq"]
CdcMode = Literal["upsert", "scd2"]

ComparisonFilter = Literal[
    "equals",
    "not_equals",
    "greater_than",
    "greater_than_or_equal",
    "less_than",
    "less_than_or_equal",
]
RangeFilter = Literal["between", "not_between"]
TextFilter = Literal["starts_with", "ends_with", "contains", "not_contains"]
SetFilter = Literal["in", "not_in"]
NullFilter = Literal["is_null", "is_not_null"]
DateFilter = Literal["date_equals", "date_between", "date_greater_than", "date_less_than"]
FilterType = Literal[
    ComparisonFilter, RangeFilter, TextFilter, SetFilter, NullFilter, DateFilter
]

StructuralTransformation = Literal[
    "modify_schema_name",
    "modify_table_name",
    "modify_column_name",
    "add_primary_key",
    "remove_primary_key",
]
TransformationType = Literal[StructuralTransformation, "modify_column_value", "create_column"]
ColumnValueOperation = Literal["uppercase", "lowercase", "trim", "format_date"]
CreateColumnOperation = Literal[
    "concat", "date_diff_years", "math_expression", "literal", "datetime_now"
]
LiteralType = Literal["text", "integer", "numeric", "boolean", "date", "timestamp"]

REPLICATION_TYPES: tuple[str, ...] = get_args(ReplicationType)
START_MODES: tuple[str, ...] = get_args(StartMode)
TRANSPORTS: tuple[str, ...] = get_args(TransportName)
CDC_MODES: tuple[str, ...] = get_args(CdcMode)
FILTER_TYPES: tuple[str, ...] = get_args(FilterType)
COMPARISON_FILTERS: tuple[str, ...] = get_args(ComparisonFilter)
RANGE_FILTERS: tuple[str, ...] = get_args(RangeFilter)
TEXT_FILTERS: tuple[str, ...] = get_args(TextFilter)
SET_FILTERS: tuple[str, ...] = get_args(SetFilter)
NULL_FILTERS: tuple[str, ...] = get_args(NullFilter)
DATE_FILTERS: tuple[str, ...] = get_args(DateFilter)
TRANSFORMATION_TYPES: tuple[str, ...] = get_args(TransformationType)
STRUCTURAL_TRANSFORMATIONS: tuple[str, ...] = get_args(StructuralTransformation)
COLUMN_VALUE_OPERATIONS: tuple[str, ...] = get_args(ColumnValueOperation)
CREATE_COLUMN_OPERATIONS: tuple[str, ...] = get_args(CreateColumnOperation)
LITERAL_TYPES: tuple[str, ...] = get_args(LiteralType)

#: Allowed priorities per transformation kind (docs/settings.md, "transformations").
PRIORITY_RANGES: dict[str, tuple[int, int]] = {
    **{name: (0, 0) for name in STRUCTURAL_TRANSFORMATIONS},
    "modify_column_value": (1, 2),
    "create_column": (2, 4),
}

TASK_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"
Identifier = Annotated[str, Field(min_length=1, max_length=63)]
Scalar = str | int | float | bool


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=False, defer_build=True)


class FullLoadSettings(_Strict):
    create_table_if_not_exists: bool = True
    recreate_table_if_exists: bool = False
    truncate_before_insert: bool = True


class Scd2Settings(_Strict):
    start_date: Identifier = "scd_start_date"
    end_date: Identifier = "scd_end_date"
    current: Identifier = "scd_current"

    @model_validator(mode="after")
    def _distinct(self) -> Scd2Settings:
        names = [self.start_date, self.end_date, self.current]
        if len(set(names)) != 3:
            raise ValueError("start_date, end_date and current must be three different column names")
        return self


class CdcSettings(_Strict):
    mode: CdcMode = "upsert"
    scd2_settings: Scd2Settings = Field(default_factory=Scd2Settings)


class TaskSection(_Strict):
    task_name: str = Field(pattern=TASK_NAME_PATTERN)
    description: str = ""
    source: str = Field(min_length=1)
    target: str = Field(min_length=1)
    replication_type: ReplicationType = "full_load"
    start_mode: StartMode = "reload"
    transport: TransportName = "local"
    interval_seconds: float = Field(default=1.0, gt=0)
    full_load_settings: FullLoadSettings = Field(default_factory=FullLoadSettings)
    cdc_settings: CdcSettings = Field(default_factory=CdcSettings)


class ErrorHandling(_Strict):
    stop_if_insert_error: bool = True
    stop_if_update_error: bool = True
    stop_if_delete_error: bool = False
    stop_if_upsert_error: bool = True
    stop_if_scd2_error: bool = True
    max_retries: int = Field(default=3, ge=0, le=100)
    # Which flag decides for a failed change: writer/errorpolicy.py (`decide`): the operation's
    # flag when the document sets it (model_fields_set), else the mode's.


class TableRef(_Strict):
    schema_name: Identifier
    table_name: Identifier

    @property
    def key(self) -> tuple[str, str]:
        return (self.schema_name, self.table_name)


class FilterSpec(_Strict):
    schema_name: Identifier
    table_name: Identifier
    column_name: Identifier
    filter_type: FilterType
    value: Scalar | None = None
    lower: Scalar | None = None
    upper: Scalar | None = None
    values: list[Scalar] | None = None
    or_group: str | None = Field(
        default=None,
        max_length=63,
        description=(
            "Name of an OR group. Filters of one table that share an or_group are combined with OR; "
            "groups and filters without one are combined with AND. Leave it out for a plain (AND) "
            "filter. Example: two filters with \"or_group\": \"dept_or_pay\" (department_id equals 10; "
            "salary greater_than 9000) and one without (hire_date is_not_null) keep the rows where "
            "(department_id = 10 OR salary > 9000) AND hire_date IS NOT NULL. A group may hold one "
            "filter; the name belongs to one table."
        ),
        examples=["dept_or_pay"],
        json_schema_extra={"minLength": 1, "pattern": r"^\S([\s\S]*\S)?$"},  # what _named_group checks
    )

    @field_validator("or_group")
    @classmethod
    def _named_group(cls, name: str | None) -> str | None:
        if name is None:
            return None
        if not name.strip():
            raise ValueError(
                "an OR group needs a name (e.g. \"dept_or_pay\"); leave or_group out for a filter "
                "that is simply ANDed"
            )
        if name != name.strip():
            raise ValueError(f"group name {name!r} starts or ends with a space; write {name.strip()!r}")
        return name

    @model_serializer(mode="wrap")
    def _without_unset_group(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A filter without a group dumps as before or_group existed (saved documents do not change)."""
        out: dict[str, Any] = handler(self)
        if out.get("or_group") is None:
            out.pop("or_group", None)
        return out

    @model_validator(mode="after")
    def _inputs_fit(self) -> FilterSpec:
        ft = self.filter_type
        given = {k for k in ("value", "lower", "upper", "values") if getattr(self, k) is not None}
        if ft in COMPARISON_FILTERS or ft in TEXT_FILTERS or ft in ("date_equals", "date_greater_than", "date_less_than"):
            need = {"value"}
        elif ft in RANGE_FILTERS or ft == "date_between":
            need = {"lower", "upper"}
        elif ft in SET_FILTERS:
            need = {"values"}
        else:
            need = set()
        missing, extra = need - given, given - need
        if missing:
            raise ValueError(f"filter_type '{ft}' needs {', '.join(sorted(missing))}")
        if extra:
            raise ValueError(
                f"filter_type '{ft}' takes {', '.join(sorted(need)) or 'no inputs'}, not {', '.join(sorted(extra))}"
            )
        if ft in SET_FILTERS and not self.values:
            raise ValueError(f"filter_type '{ft}' needs a non-empty values list")
        if ft in TEXT_FILTERS and not isinstance(self.value, str):
            raise ValueError(f"filter_type '{ft}' needs a text value")
        return self

    @property
    def table_key(self) -> tuple[str, str]:
        return (self.schema_name, self.table_name)


class TransformationSpec(_Strict):
    schema_name: Identifier
    table_name: Identifier
    priority: int = Field(ge=0, le=4)
    transformation_type: TransformationType
    contract: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _contract_fits(self) -> TransformationSpec:
        lo, hi = PRIORITY_RANGES[self.transformation_type]
        if not lo <= self.priority <= hi:
            allowed = f"{lo}" if lo == hi else f"{lo} to {hi}"
            raise ValueError(
                f"priority {self.priority} is not allowed for {self.transformation_type} (allowed: {allowed})"
            )
        model = _CONTRACTS[self.transformation_type]
        if self.transformation_type == "create_column":
            op = self.contract.get("operation")
            if op not in CREATE_COLUMN_OPERATIONS:
                raise ValueError(
                    f"contract.operation must be one of {', '.join(CREATE_COLUMN_OPERATIONS)}, got {op!r}"
                )
            model = _CREATE_CONTRACTS[op]
        try:
            parsed = model.model_validate(self.contract)
        except ValidationError as exc:
            raise ValueError("contract: " + format_validation_error(exc, prefix="contract")) from None
        self.contract = parsed.model_dump(exclude_unset=True)
        self.contract.update({k: v for k, v in parsed.model_dump().items() if k not in self.contract and v is not None})
        return self

    @property
    def table_key(self) -> tuple[str, str]:
        return (self.schema_name, self.table_name)

    def parsed_contract(self) -> BaseModel:
        """The contract as its typed model."""
        if self.transformation_type == "create_column":
            return _CREATE_CONTRACTS[self.contract["operation"]].model_validate(self.contract)
        return _CONTRACTS[self.transformation_type].model_validate(self.contract)


# Contracts per transformation type -------------------------------------------------

class ModifySchemaName(_Strict):
    target_schema_name: Identifier


class ModifyTableName(_Strict):
    target_table_name: Identifier


class ModifyColumnName(_Strict):
    column_name: Identifier
    new_column_name: Identifier


class PrimaryKeyColumns(_Strict):
    column_names: list[Identifier] = Field(min_length=1)


class ModifyColumnValue(_Strict):
    column_name: Identifier
    operation: ColumnValueOperation
    format: str | None = None

    @model_validator(mode="after")
    def _format(self) -> ModifyColumnValue:
        if self.operation == "format_date" and not self.format:
            raise ValueError("operation 'format_date' needs format (strftime style, e.g. %d/%m/%Y)")
        if self.operation != "format_date" and self.format is not None:
            raise ValueError(f"operation '{self.operation}' takes no format")
        return self


class _CreateBase(_Strict):
    new_column_name: Identifier
    operation: CreateColumnOperation


class CreateConcat(_CreateBase):
    operation: Literal["concat"]
    depends_on: list[Identifier] = Field(min_length=1)
    separator: str = ""


class CreateDateDiffYears(_CreateBase):
    operation: Literal["date_diff_years"]
    depends_on: list[Identifier] = Field(min_length=1, max_length=1)


class CreateMathExpression(_CreateBase):
    operation: Literal["math_expression"]
    expression: str = Field(min_length=1, max_length=1000)


class CreateLiteral(_CreateBase):
    operation: Literal["literal"]
    value: Scalar | None
    type: LiteralType = "text"


class CreateDatetimeNow(_CreateBase):
    operation: Literal["datetime_now"]


_CONTRACTS: dict[str, type[BaseModel]] = {
    "modify_schema_name": ModifySchemaName,
    "modify_table_name": ModifyTableName,
    "modify_column_name": ModifyColumnName,
    "add_primary_key": PrimaryKeyColumns,
    "remove_primary_key": PrimaryKeyColumns,
    "modify_column_value": ModifyColumnValue,
    "create_column": _CreateBase,
}
_CREATE_CONTRACTS: dict[str, type[BaseModel]] = {
    "concat": CreateConcat,
    "date_diff_years": CreateDateDiffYears,
    "math_expression": CreateMathExpression,
    "literal": CreateLiteral,
    "datetime_now": CreateDatetimeNow,
}


class TaskSettings(_Strict):
    """A whole replication task document."""

    task: TaskSection
    error_handling: ErrorHandling = Field(default_factory=ErrorHandling)
    tables: list[TableRef] = Field(min_length=1)
    filters: list[FilterSpec] = Field(default_factory=list)
    transformations: list[TransformationSpec] = Field(default_factory=list)

    @field_validator("tables")
    @classmethod
    def _unique_tables(cls, tables: list[TableRef]) -> list[TableRef]:
        seen: set[tuple[str, str]] = set()
        for t in tables:
            if t.key in seen:
                raise ValueError(f"table {t.schema_name}.{t.table_name} is listed twice")
            seen.add(t.key)
        return tables

    @model_validator(mode="after")
    def _rules_name_listed_tables(self) -> TaskSettings:
        listed = {t.key for t in self.tables}
        for kind in ("filters", "transformations"):
            for i, rule in enumerate(getattr(self, kind)):
                if rule.table_key not in listed:
                    raise ValueError(
                        f"{kind}[{i}] names table {rule.schema_name}.{rule.table_name}, "
                        f"which is not in tables (listed: {', '.join('.'.join(k) for k in sorted(listed))})"
                    )
        return self

    @model_validator(mode="after")
    def _groups_stay_in_one_table(self) -> TaskSettings:
        """An OR group combines filters of one table (rows of two tables are never ORed)."""
        first: dict[str, tuple[int, FilterSpec]] = {}
        for i, f in enumerate(self.filters):
            if f.or_group is None:
                continue
            j, other = first.setdefault(f.or_group, (i, f))
            if other.table_key != f.table_key:
                raise ValueError(
                    f"filters[{i}].or_group: group {f.or_group!r} already holds filters[{j}] of table "
                    f"{other.schema_name}.{other.table_name}; a group combines filters of one table, "
                    f"give the filters of {f.schema_name}.{f.table_name} a group name of their own"
                )
        return self

    # convenience ------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.task.task_name

    def filters_for(self, key: tuple[str, str]) -> list[FilterSpec]:
        return [f for f in self.filters if f.table_key == key]

    def transformations_for(self, key: tuple[str, str]) -> list[tuple[int, TransformationSpec]]:
        """(index in the document, rule) in application order: priority, then list order."""
        rules = [(i, t) for i, t in enumerate(self.transformations) if t.table_key == key]
        return sorted(rules, key=lambda it: (it[1].priority, it[0]))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def format_loc(loc: tuple[Any, ...], prefix: str = "") -> str:
    """('transformations', 2, 'contract', 'depends_on') -> 'transformations[2].contract.depends_on'."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", str(part)):
            out += f"[{json.dumps(str(part), ensure_ascii=False)}]"  # an odd key stays visible: task[""]
        else:
            out += f".{part}" if out else str(part)
    return out or "(document)"


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line per problem, each led by the field path."""
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-after")))
        msg = err["msg"].removeprefix("Value error, ")
        nested = re.match(r"^contract: (contract[.\[]\S*?): (.*)$", msg)
        if nested:  # errors of a typed contract keep their own sub-path
            lines.append(f"{format_loc(loc, prefix)}.{nested.group(1)}: {nested.group(2)}")
            continue
        if not loc and not prefix and re.match(r"^[a-z_]+(\[\d+\])?(\.[a-z_]+)*: ", msg):
            lines.append(msg)  # a document-level rule that names its own field path
            continue
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not part of the settings contract)"
        elif err["type"] == "literal_error":
            msg = f"{msg}, got {err.get('input')!r}"
        lines.append(f"{format_loc(loc, prefix)}: {msg}")
    return "; ".join(lines)


def parse_settings(doc: dict[str, Any] | str | Path) -> TaskSettings:
    """Parse a settings document (dict, JSON/YAML text, or a file path) or raise SettingsError."""
    data = load_document(doc)
    try:
        return TaskSettings.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(format_validation_error(exc)) from None


def load_document(doc: dict[str, Any] | str | Path) -> dict[str, Any]:
    """Read a settings document from a dict, a path to .json/.yaml, or JSON/YAML text."""
    if isinstance(doc, dict):
        return doc
    text: str
    if isinstance(doc, Path) or (isinstance(doc, str) and "\n" not in doc and len(doc) < 4096 and Path(doc).suffix.lower() in (".json", ".yaml", ".yml")):
        path = Path(doc)
        if not path.exists():
            raise SettingsError(f"settings file not found: {path}")
        text = path.read_text(encoding="utf-8")
    else:
        text = str(doc)
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        import yaml  # start-up speed: only YAML settings need it

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SettingsError(f"settings are neither valid JSON nor YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SettingsError("settings must be a JSON/YAML object with task, tables, filters, transformations")
    return data


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the settings document (what `trempy-nb schema` prints)."""
    schema = TaskSettings.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "trempy_nb task settings"
    return schema
