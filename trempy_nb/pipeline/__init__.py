"""Pipeline: filters and transformations compiled once per table (pure: Polars in, Polars out).

Frames hold PostgreSQL text in every data column (see trempy_nb.changes);
`compile_plan(settings, table)` validates a table's rules against its real
types and returns a `TablePlan` whose `apply`/`apply_changes` turn a source
batch into a target batch.
"""

from trempy_nb.pgcopy.textcodec import (
    decode_copy_text,
    encode_copy_text,
    read_copy_text,
    write_copy_text,
)
from trempy_nb.pipeline.filters import (
    CompiledFilter,
    allowed_filter_types,
    compile_filters,
    filter_expr,
    filters_to_sql,
    predicate_sql,
)
from trempy_nb.pipeline.mathexpr import MathExpression, MathSyntaxError, compile_math
from trempy_nb.pipeline.plan import TablePlan, compile_plan, compile_plans
from trempy_nb.pipeline.transformations import BatchContext

__all__ = [
    "BatchContext",
    "CompiledFilter",
    "MathExpression",
    "MathSyntaxError",
    "TablePlan",
    "allowed_filter_types",
    "compile_filters",
    "compile_math",
    "compile_plan",
    "compile_plans",
    "decode_copy_text",
    "encode_copy_text",
    "filter_expr",
    "filters_to_sql",
    "predicate_sql",
    "read_copy_text",
    "write_copy_text",
]
