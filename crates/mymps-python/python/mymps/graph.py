"""Graphs of ops that run in one request: ``client.graph()``.

A graph is built step by step, each op on the graph's inputs and earlier
steps' results, then run in one round trip; intermediate results stay on
the server (on its device) and only the outputs come back::

    g = client.graph()
    x = g.input("x")
    h = g.relu(g.matmul(x, w))          # or g.op("matmul", x, w)
    y = g.softmax(h, dim=-1)
    g.output("y", y)
    out = g.run({"x": batch})           # {"y": array}
    out = g.run({"x": batch}, keep=True)  # {"y": RemoteTensor}
    g.register()                        # later runs go by id: no re-validation

- Positional arguments of an op are tensors: graph inputs, earlier
  results (``Node``), ``RemoteTensor``s or arrays (bound to the graph:
  sent, or referred to, on every run). Keyword arguments are scalars
  (``dim=-1``), or tensors given by keyword when they are a ``Node`` or a
  ``RemoteTensor`` (``g.conv2d(x, weight=w)``).
- An op with several results gives a node per result by index:
  ``u, s, vh = g.svd(a)[0], ...`` or ``r = g.svd(a); r[0]``.
- The server checks the whole graph before any step runs; an error names
  the step (``step 2 (matmul): ...``), and the message here adds the line
  of your script that made it.
"""

from __future__ import annotations

import os
import sys
from types import FrameType
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from .errors import BadArgumentError, MympsError

__all__ = ["Graph", "Node"]

_HERE = os.path.dirname(os.path.abspath(__file__))


def _caller() -> str:
    """``file:line`` of the first frame outside this module."""
    f: Optional[FrameType] = sys._getframe(1)
    while f is not None and os.path.dirname(os.path.abspath(f.f_code.co_filename)) == _HERE:
        f = f.f_back
    if f is None:
        return "?"
    return f"{os.path.basename(f.f_code.co_filename)}:{f.f_lineno}"


class Node:
    """A tensor inside a graph: a graph input, or a result of a step."""

    __slots__ = ("_graph", "_source")

    def __init__(self, graph: "Graph", source: Tuple[Any, ...]) -> None:
        self._graph = graph
        self._source = source

    def __getitem__(self, result: Union[int, str]) -> "Node":
        """Result ``result`` of the step (``0``, ``1``, ... for an op that
        returns several tensors)."""
        if self._source[0] != "step":
            raise BadArgumentError(f"{self!r} is a graph input; only a step has results to index")
        return Node(self._graph, ("step", self._source[1], str(result)))

    def __repr__(self) -> str:
        if self._source[0] == "input":
            return f"<graph input {self._source[1]!r}>"
        _, i, result = self._source
        op = self._graph._steps[i][0]
        tail = "" if result == "output" else f"[{result}]"
        return f"<step {i} ({op}){tail}>"


def _is_remote(v: Any) -> bool:
    from ._native import RemoteTensor

    return isinstance(v, RemoteTensor)


class Graph:
    """A graph of ops run in one request; made by ``client.graph()``.

    Build it with :meth:`input`, :meth:`op` (or an op's name as a method:
    ``g.matmul(x, w)``) and :meth:`output`; run it with :meth:`run`;
    :meth:`register` it once when it runs often, so that the server keeps
    it checked and later runs send its id only (a registered graph can no
    longer change; at most 1024 are registered per connection).
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        # (op, {arg: source}, {kwarg: scalar}) per step, as sent.
        self._steps: List[Tuple[str, Dict[str, Tuple[Any, ...]], Dict[str, Any]]] = []
        # Where each step was made (file:line) and how it was called.
        self._where: List[str] = []
        self._outputs: List[Tuple[str, Tuple[Any, ...]]] = []
        self._inputs: Dict[str, Node] = {}
        # Tensors bound to the graph (arrays, RemoteTensors): input name → value.
        self._bound: Dict[str, Any] = {}
        self._id: Optional[int] = None

    # ------------------------------------------------------------ building

    def _check_open(self, what: str) -> None:
        if self._id is not None:
            raise BadArgumentError(
                f"{what}: this graph is registered (id {self._id}) and cannot change; "
                "build a new one with client.graph()"
            )

    def input(self, name: str) -> Node:
        """The graph input ``name``, given at :meth:`run` (an array or a
        RemoteTensor)."""
        self._check_open(f"g.input({name!r})")
        if not isinstance(name, str) or not name:
            raise BadArgumentError(f"a graph input's name is a non-empty string, not {name!r}")
        if name.startswith("__bound"):
            raise BadArgumentError(f"input names starting with '__bound' are the graph's own: {name!r}")
        node = self._inputs.get(name)
        if node is None:
            node = self._inputs[name] = Node(self, ("input", name))
        return node

    def _tensor(self, value: Any, what: str) -> Tuple[Any, ...]:
        """The source of a tensor argument."""
        if isinstance(value, Node):
            if value._graph is not self:
                raise BadArgumentError(f"{what}: {value!r} is a node of another graph")
            return value._source
        if value is None:
            raise BadArgumentError(f"{what}: None is not a tensor (leave an optional tensor out)")
        for name, bound in self._bound.items():
            if bound is value:
                return ("input", name)
        if not _is_remote(value):
            import numpy as np

            value = np.asarray(value)
        name = f"__bound{len(self._bound)}"
        self._bound[name] = value
        return ("input", name)

    def op(self, op: str, *args: Any, **kwargs: Any) -> Node:
        """A step running ``op`` (a whitelisted op, as for ``exec``).

        Positional arguments are tensors (nodes, RemoteTensors, arrays);
        keyword arguments are scalars, or tensors by keyword when they are
        nodes or RemoteTensors. Returns the step's result (index it for an
        op with several: ``node[0]``)."""
        self._check_open(f"g.op({op!r}, ...)")
        if not isinstance(op, str) or not op:
            raise BadArgumentError(f"an op's name is a non-empty string, not {op!r}")
        i = len(self._steps)
        what = f"step {i} ({op})"
        inputs: Dict[str, Tuple[Any, ...]] = {}
        for pos, a in enumerate(args):
            inputs[str(pos)] = self._tensor(a, f"{what}, argument {pos}")
        scalars: Dict[str, Any] = {}
        for key, v in kwargs.items():
            if isinstance(v, Node) or _is_remote(v):
                inputs[key] = self._tensor(v, f"{what}, argument {key!r}")
            else:
                scalars[key] = v
        self._steps.append((op, inputs, scalars))
        shown = ", ".join([repr_arg(a) for a in args] + [f"{k}={repr_arg(v)}" for k, v in kwargs.items()])
        self._where.append(f"{op}({shown}) at {_caller()}")
        return Node(self, ("step", i, "output"))

    def __getattr__(self, name: str) -> Any:
        """``g.matmul(x, w)`` is ``g.op("matmul", x, w)``."""
        if name.startswith("_"):
            raise AttributeError(name)

        def step(*args: Any, **kwargs: Any) -> Node:
            return self.op(name, *args, **kwargs)

        step.__name__ = name
        step.__doc__ = f"g.op({name!r}, ...): a step running {name}."
        return step

    def output(self, name: str, node: Node) -> None:
        """Names ``node`` as an output of the graph (what :meth:`run`
        returns, as data or, with ``keep``, as RemoteTensors)."""
        self._check_open(f"g.output({name!r}, ...)")
        if not isinstance(node, Node):
            raise BadArgumentError(f"g.output({name!r}, ...): the output is a node of the graph, not {type(node).__name__}")
        if any(n == name for n, _ in self._outputs):
            raise BadArgumentError(f"g.output({name!r}, ...): the graph has an output {name!r} already")
        self._outputs.append((name, self._tensor(node, f"output {name!r}")))

    # ------------------------------------------------------------- running

    def _spec(self) -> Tuple[list, list]:
        if not self._outputs:
            raise BadArgumentError("the graph has no outputs: name them with g.output(name, node)")
        return self._steps, self._outputs

    def _explain(self, e: MympsError) -> MympsError:
        """``e`` with the step it names shown as the script made it."""
        msg = e.message
        if msg.startswith("step "):
            head = msg[5:].split(" ", 1)[0]
            if head.isdigit() and int(head) < len(self._where):
                msg = f"{msg}\n  step {head} is g.{self._where[int(head)]}"
        return type(e)(msg, code=e.code, code_number=e.code_number)

    def register(self) -> "Graph":
        """Has the server check and keep the graph, so that later runs send
        only its id; the graph can no longer change. Returns the graph."""
        if self._id is None:
            steps, outputs = self._spec()
            try:
                self._id = self._client._register_graph(steps, outputs)
            except MympsError as e:
                raise self._explain(e) from None
        return self

    @property
    def id(self) -> Optional[int]:
        """The id the server registered the graph under (None: not
        registered)."""
        return self._id

    def run(
        self,
        inputs: Optional[Mapping[str, Any]] = None,
        *,
        keep: Union[None, bool, str, List[str]] = None,
    ) -> Dict[str, Any]:
        """Runs every step in one request.

        Args:
            inputs: the graph's inputs by name: arrays or RemoteTensors.
            keep: outputs to keep on the server: True (all), a name, or a
                list of names; they come back as RemoteTensors.

        Returns:
            The outputs by name: numpy arrays, RemoteTensors for those kept.

        Raises:
            The error of the failing step (its message names the step and
            the line that made it); nothing of a graph the server refuses
            runs.
        """
        given = dict(inputs or {})
        for name in given:
            if name.startswith("__bound"):
                raise BadArgumentError(f"{name!r} is not an input of the graph")
        given.update(self._bound)
        graph = self._id if self._id is not None else self._spec()
        try:
            return self._client._run_graph(graph, given, keep)
        except MympsError as e:
            raise self._explain(e) from None

    __call__ = run

    # ---------------------------------------------------------- inspecting

    @property
    def steps(self) -> List[str]:
        """Each step as it was made: ``"matmul(x, w) at script.py:12"``."""
        return list(self._where)

    def __repr__(self) -> str:
        lines = [f"<mymps graph: {len(self._steps)} steps, outputs {[n for n, _ in self._outputs]}"
                 + (f", registered as {self._id}" if self._id is not None else "") + ">"]
        for i, w in enumerate(self._where):
            lines.append(f"  step {i}: {w}")
        return "\n".join(lines)


def repr_arg(v: Any) -> str:
    """A step's argument as the step list shows it."""
    if isinstance(v, Node):
        if v._source[0] == "input":
            return str(v._source[1])
        return f"step{v._source[1]}" + ("" if v._source[2] == "output" else f"[{v._source[2]}]")
    if _is_remote(v):
        return repr(v)
    shape = getattr(v, "shape", None)
    if shape is not None:
        return f"<array {tuple(shape)} {getattr(v, 'dtype', '')}>"
    return repr(v)
