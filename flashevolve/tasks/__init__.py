"""Tasks: the protocol, the ready :class:`PromptTask`, built-ins and file loaders."""

from flashevolve.tasks.base import (
    Example,
    MetricFn,
    MetricResult,
    PromptTask,
    RenderFn,
    Rollout,
    Task,
    coerce_metric,
    default_render,
)
from flashevolve.tasks.registry import available_tasks, get_task, load_task_file

__all__ = [
    "Example",
    "MetricFn",
    "MetricResult",
    "PromptTask",
    "RenderFn",
    "Rollout",
    "Task",
    "available_tasks",
    "coerce_metric",
    "default_render",
    "get_task",
    "load_task_file",
]
