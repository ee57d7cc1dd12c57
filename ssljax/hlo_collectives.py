"""The collectives of a compiled XLA program, read from its HLO text, with their bytes.

``jax.jit(f).lower(...).compile().as_text()`` is the per-device program after XLA's SPMD
partitioner has written the communication into it. This module lists its collectives
(``all-reduce``, ``all-gather``, ``reduce-scatter``, ``all-to-all``, ``collective-permute``),
their operand bytes on one device and the bytes a bandwidth-optimal (ring) algorithm sends, so
that what a sharded train step communicates can be checked (``tests/test_comm_budget.py``) and
budgeted (``benchmarks/comm_budget.py``) without the hardware.
"""

from __future__ import annotations

import dataclasses
import re

# Kinds of collective instruction, as HLO names them.
KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
# Bytes per element of each HLO element type.
DTYPE_BYTES = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
    "c64": 8,
    "c128": 16,
}


@dataclasses.dataclass(frozen=True)
class Collective:
    """One collective instruction of a per-device HLO program.

    Attributes:
      kind: one of :data:`KINDS`.
      operand_bytes: bytes of its operands on one device.
      result_bytes: bytes of its result on one device.
      group_size: devices in each replica group.
      shapes: the operand shapes, as HLO prints them.
      op_name: the JAX operation it came from (HLO metadata), if recorded.
    """

    kind: str
    operand_bytes: int
    result_bytes: int
    group_size: int
    shapes: str
    op_name: str

    @property
    def sent_bytes(self) -> float:
        """Bytes one device sends with bandwidth-optimal (ring) algorithms."""
        g, s = self.group_size, self.operand_bytes
        if g <= 1:
            return 0.0
        if self.kind == "all-reduce":
            return 2.0 * (g - 1) / g * s
        if self.kind == "all-gather":
            return float((g - 1) * s)
        if self.kind in ("reduce-scatter", "all-to-all"):
            return (g - 1) / g * s
        return float(s)  # collective-permute


_SHAPE = re.compile(r"\b(" + "|".join(DTYPE_BYTES) + r")\[([\d,]*)\]")
_DEF = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_OP = re.compile(r"\s(" + "|".join(KINDS) + r")(-start)?\(")


def shape_bytes(text: str) -> int:
    """Total bytes of every array shape (``f32[3,4]``...) written in ``text``."""
    total = 0
    for dtype, dims in _SHAPE.findall(text):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * DTYPE_BYTES[dtype]
    return total


def _group_size(attrs: str, default: int) -> int:
    """Devices per replica group, from any of the three HLO spellings of ``replica_groups``."""
    # mesh['axis_0'=8,'axis_1'=8] {'axis_1'}, possibly with ", device_ids=([8,8]T(1,0))" before
    # the braces: the named axes in braces form a group.
    m = re.search(r"replica_groups=mesh\[([^\]]*)\][^{]*\{([^}]*)\}", attrs)
    if m:
        sizes = dict(re.findall(r"'([^']+)'=(\d+)", m.group(1)))
        names = re.findall(r"'([^']+)'", m.group(2))
        size = 1
        for n in names:
            size *= int(sizes[n])
        return size
    # [num_groups, group_size]<=[...] (iota form).
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", attrs)
    if m:
        return int(m.group(2))
    # {{0,1,2,3},{4,5,6,7}} (explicit list); {} means all devices.
    m = re.search(r"replica_groups=\{\{([\d,]*)\}", attrs)
    if m:
        return len([x for x in m.group(1).split(",") if x])
    m = re.search(r"source_target_pairs=", attrs)
    return 2 if m else default


def _split_call(rest: str, start: int) -> tuple[str, str]:
    """Splits ``op(operands), attrs`` at the parenthesis matching the one at ``start``."""
    depth = 0
    for i in range(start, len(rest)):
        if rest[i] == "(":
            depth += 1
        elif rest[i] == ")":
            depth -= 1
            if depth == 0:
                return rest[start + 1 : i], rest[i + 1 :]
    return rest[start + 1 :], ""


def parse_collectives(hlo_text: str, num_devices: int) -> list[Collective]:
    """Every collective of an HLO module (``compiled.as_text()``), with its bytes.

    Operand shapes are looked up in the module's own definitions (the compiled HLO prints
    operands by name). Asynchronous pairs are counted once, at their ``-start``.

    Args:
      hlo_text: the HLO module text.
      num_devices: devices of the program, the group size when none is printed.

    Returns:
      The collectives in program order.
    """
    defs: dict[str, str] = {}
    lines = hlo_text.splitlines()
    for line in lines:
        m = _DEF.match(line)
        if m:
            # The result type: a parenthesised tuple or the first token.
            rhs = m.group(2)
            if rhs.startswith("("):
                typ, _ = _split_call(rhs, 0)
            else:
                typ = rhs.split(" ", 1)[0]
            defs[m.group(1)] = typ
    found = []
    for line in lines:
        m = _DEF.match(line)
        if not m:
            continue
        rhs = m.group(2)
        op = _OP.search(rhs)
        if not op:
            continue
        kind = op.group(1)
        operands, attrs = _split_call(rhs, op.end() - 1)
        operand_bytes = 0
        for token in operands.split(","):
            token = token.strip()
            if _SHAPE.search(token):  # operand printed with its shape
                operand_bytes += shape_bytes(token)
            else:
                operand_bytes += shape_bytes(defs.get(token.lstrip("%"), ""))
        result_bytes = shape_bytes(rhs[: op.start()])
        name = re.search(r'op_name="([^"]*)"', attrs)
        found.append(
            Collective(
                kind=kind,
                operand_bytes=operand_bytes,
                result_bytes=result_bytes,
                group_size=_group_size(attrs, num_devices),
                shapes=operands if _SHAPE.search(operands) else rhs[: op.start()].strip(),
                op_name=name.group(1) if name else "",
            )
        )
    return found


def summarize(collectives: list[Collective]) -> dict[str, dict[str, float]]:
    """Per kind: count, operand bytes and ring bytes sent per device."""
    out = {k: {"count": 0, "operand_bytes": 0, "sent_bytes": 0.0} for k in KINDS}
    for c in collectives:
        out[c.kind]["count"] += 1
        out[c.kind]["operand_bytes"] += c.operand_bytes
        out[c.kind]["sent_bytes"] += c.sent_bytes
    return out
