"""Run untrusted Python (model-written code, evolved harnesses) behind Linux's own walls.

    from flashevolve.sandbox import Sandbox, llm_forwarder
    sandbox = Sandbox(timeout_s=5, memory_mb=512)
    print(sandbox.protections().summary())           # log it at the start of a run
    result = await sandbox.run("import fe_llm; fe_llm.set_result(fe_llm.complete('hi'))",
                               llm=llm_forwarder(task_llm, stage="evaluate", item_id="c3/e7"))
    result.status, result.value, result.reason

The program runs in a child process isolated by bubblewrap (pid, net, ipc, uts namespaces; a
private read-only filesystem view; a size-capped tmpfs as its only writable directory; a
non-root uid), with Landlock on top where the kernel has it and kernel resource limits.  Its
only way to the model is ``fe_llm`` (a pipe to the parent).  See ``docs/security.md``.
"""

from flashevolve.sandbox.channel import LLMHandler, llm_forwarder
from flashevolve.sandbox.config import (
    CallResult,
    LLMCall,
    ResourceUsage,
    SandboxConfig,
    SandboxResult,
    Status,
)
from flashevolve.sandbox.protections import Protections
from flashevolve.sandbox.sandbox import Sandbox, SandboxRefused, SandboxSession


def protections(config: SandboxConfig | None = None) -> Protections:
    """What a sandboxed program gets on this machine (probed once per config, then cached)."""
    return Sandbox(config).protections()


__all__ = [
    "CallResult",
    "LLMCall",
    "LLMHandler",
    "Protections",
    "ResourceUsage",
    "Sandbox",
    "SandboxConfig",
    "SandboxRefused",
    "SandboxResult",
    "SandboxSession",
    "Status",
    "llm_forwarder",
    "protections",
]
