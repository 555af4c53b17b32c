"""Read run folders back as typed results: what ``bitsound report`` shows for each run.

A run folder is what a command wrote: ``bitsound train`` (``metrics.json``, ``log.jsonl``,
``model.pt``), ``bitsound cv`` (``cv.json`` and one ``cv-FOLD/`` train folder per fold),
``bitsound study`` (``study.json`` and one ``rowNN/`` train folder per row, each shown as a
run) or ``bitsound compress`` (``compress.json``: each stage is shown as a run, with the sizes,
operations and held-out accuracy the compress command measured on the stage's saved model). A
``.bsnn`` file beside ``model.pt`` (``bitsound export``; for cv beside ``cv.json`` or in a fold
folder) adds the engine's speed.

A ``metrics.json`` written before held-out predictions were stored still has the held-out
confusion matrix (``held_out.confusion_matrix``): the report then draws that (per-group and
per-device accuracy need the predictions).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bitsound.errors import DataError
from bitsound.metrics import confusion_matrix, per_class_recall
from bitsound.report.results import (
    ComplexityResult,
    CompressResult,
    CompressRow,
    CvResult,
    Prediction,
    StudyResult,
    TrainResult,
    load_result,
)

log = logging.getLogger("bitsound.report")


@dataclass
class FoldRun:
    """One trained model of a run (the run itself for train, each fold for cv)."""

    name: str
    path: Path
    history: list[dict]
    result: TrainResult


@dataclass
class Run:
    """Everything the report shows about one run folder.

    ``accuracy`` is the held-out accuracy the comparison uses (train: the held-out split;
    cv: the mean over folds; compress: the stage's model on its input model's held-out split),
    None when nothing was held out; ``split`` says which. A compress stage has no folds and no
    predictions; ``stage`` is its measured row and ``compress`` the whole result.
    """

    name: str
    path: Path
    kind: str  # "train", "cv" or "compress"
    recipe: str
    data: str
    split: str
    labels: list[str]
    accuracy: float | None
    folds: list[FoldRun]
    predictions: list[Prediction]
    references: list[str] = field(default_factory=list)
    cv: CvResult | None = None
    complexity: ComplexityResult | None = None
    model_path: Path | None = None
    engine: dict | None = None
    engine_path: Path | None = None
    stage: CompressRow | None = None
    compress: CompressResult | None = None

    @property
    def binary(self) -> bool:
        """True when a layer of the model stores 1-bit weights (compress stages: when it counts
        binary operations, the only trace of 1-bit layers in a compress row)."""
        if self.stage is not None:
            return self.stage.bops > 0
        return bool(self.complexity and any(layer.bits_per_weight == 1 for layer in self.complexity.layers))

    def costs(self) -> dict | None:
        """``params``, ``kb`` (storage rule), ``macs``, ``bops`` and ``mac_equivalents`` (MACs +
        BOPs/64) from the complexity report, or a compress stage's measured row; None without."""
        from bitsound.complexity import XNOR_SPEEDUP

        if self.stage is not None:
            r = self.stage
            return {"params": r.params, "kb": r.kb["storage"], "macs": r.macs, "bops": r.bops,
                    "mac_equivalents": r.macs + r.bops / XNOR_SPEEDUP}
        c = self.complexity
        if c is None:
            return None
        return {"params": c.params, "kb": c.kb["storage"], "macs": c.macs, "bops": c.bops,
                "mac_equivalents": c.mac_equivalents}

    @property
    def balanced_accuracy(self) -> float | None:
        """Held-out balanced accuracy (cv: mean over folds), None when not measured."""
        if self.stage is not None:
            return self.stage.held_out_balanced_accuracy
        if self.cv is not None:
            return float(np.mean([f.balanced_accuracy for f in self.cv.folds]))
        if self.kind == "train" and self.folds and self.folds[0].result.held_out is not None:
            return self.folds[0].result.held_out.balanced_accuracy
        return None

    def confusion(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Confusion matrix and per-class recall of the held-out examples (None without any).

        From the stored predictions; for result files written before predictions were stored,
        the held-out confusion matrices of the train (or every fold's) ``metrics.json``, summed.
        """
        if not self.predictions:
            matrix = self.stored_confusion()
            return None if matrix is None else (matrix, per_class_recall(matrix))
        index = {label: i for i, label in enumerate(self.labels)}
        y_true = [index[p.true] for p in self.predictions]
        y_pred = [index[p.predicted] for p in self.predictions]
        matrix = confusion_matrix(np.array(y_true), np.array(y_pred), n_classes=len(self.labels))
        return matrix, per_class_recall(matrix)

    def stored_confusion(self) -> np.ndarray | None:
        """Sum of the folds' ``held_out.confusion_matrix`` in ``labels`` order (None: none held out).

        Raises
        ------
        DataError
            A stored matrix does not match its label list.
        """
        index = {label: i for i, label in enumerate(self.labels)}
        total = np.zeros((len(self.labels), len(self.labels)), dtype=np.int64)
        found = False
        for fold in self.folds:
            scores = fold.result.held_out
            if scores is None:
                continue
            matrix = np.asarray(scores.confusion_matrix, dtype=np.int64)
            n = len(scores.labels)
            if matrix.shape != (n, n) or any(label not in index for label in scores.labels):
                raise DataError(f"'{fold.path / 'metrics.json'}': held_out.confusion_matrix has shape "
                                f"{matrix.shape} for {n} labels {scores.labels} (run labels {self.labels}); "
                                f"the file is damaged: rerun the training")
            order = [index[label] for label in scores.labels]
            total[np.ix_(order, order)] += matrix
            found = True
        return total if found else None

    def accuracy_by(self, key: str) -> list[tuple[str, float, int]]:
        """Held-out accuracy per value of ``key`` ("group", "device" or "fold"): (value, acc, n).

        Empty when the clips do not carry that field (or carry a single value).
        """
        counts: dict[str, list[int]] = {}
        for p in self.predictions:
            value = getattr(p, key)
            if value is None:
                continue
            hit = counts.setdefault(value, [0, 0])
            hit[0] += p.true == p.predicted
            hit[1] += 1
        if len(counts) < 2:
            return []
        return [(value, hits / n, n) for value, (hits, n) in sorted(counts.items())]


def read_history(path: Path) -> list[dict]:
    """Epoch records of a ``log.jsonl`` (empty when the file is absent)."""
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise DataError(f"'{path}' line {number} is not JSON; the training log is damaged "
                            f"(rerun the training)") from None
    return rows


def _complexity(model_path: Path) -> ComplexityResult | None:
    if not model_path.is_file():
        log.warning("no model.pt in %s: the report shows no complexity table for it", model_path.parent)
        return None
    from bitsound.complexity import complexity_report
    from bitsound.modelfile import feature_shape, load_model

    model = load_model(model_path)
    report = complexity_report(model.net, feature_shape(model.recipe))
    return ComplexityResult.model_validate({**report, "model": str(model_path)})


def _train_run(path: Path, name: str) -> Run:
    result = load_result(path / "metrics.json", TrainResult)
    split = result.split
    if result.held_out is None:
        how = "nothing held out"
    else:
        how = f"{split.kind} split '{split.name}', {result.held_out.n} held-out examples"
    fold = FoldRun(name=split.name or "all", path=path, history=read_history(path / "log.jsonl"),
                   result=result)
    return Run(name=name, path=path, kind="train", recipe=result.recipe, data=result.data, split=how,
               labels=result.labels,
               accuracy=None if result.held_out is None else result.held_out.accuracy, folds=[fold],
               predictions=result.predictions, references=result.references,
               model_path=path / "model.pt")


def _cv_run(path: Path, name: str) -> Run:
    cv = load_result(path / "cv.json", CvResult)
    folds = []
    for row in cv.folds:
        fold_dir = path / f"cv-{row.held_out}"
        if not (fold_dir / "metrics.json").is_file():
            raise DataError(f"cv run '{path}' names fold '{row.held_out}' but '{fold_dir}/metrics.json' "
                            f"is missing; rerun bitsound cv into this folder")
        folds.append(FoldRun(name=row.held_out, path=fold_dir, history=read_history(fold_dir / "log.jsonl"),
                             result=load_result(fold_dir / "metrics.json", TrainResult)))
    labels = sorted({label for f in folds for label in f.result.labels})
    how = f"{cv.split} cross-validation, mean of {len(cv.folds)} held-out folds"
    return Run(name=name, path=path, kind="cv", recipe=cv.recipe, data=cv.data, split=how, labels=labels,
               accuracy=cv.mean_accuracy, folds=folds, predictions=cv.predictions,
               references=cv.references, cv=cv, model_path=folds[0].path / "model.pt")


def _compress_runs(path: Path) -> list[Run]:
    """One run per stage of a ``bitsound compress`` folder (row 0: the input model)."""
    result = load_result(path / "compress.json", CompressResult)
    split = result.split
    how = f"{split.kind} split" + (f" '{split.name}'" if split.name else "") + " of the input model"
    runs = []
    for row in result.rows:
        runs.append(Run(name=f"{path.name}/{row.stage}", path=path, kind="compress", recipe=result.recipe,
                        data=result.data, split=how, labels=[], accuracy=row.held_out_accuracy, folds=[],
                        predictions=[], references=result.references, stage=row, compress=result))
    return runs


def load_runs(paths: list[Path], *, measure_engine: bool = True) -> list[Run]:
    """Every run under ``paths`` (train, cv, study or compress folders), with complexity and
    engine speed.

    Raises
    ------
    DataError
        A path is not a folder any bitsound command wrote (the message says what it looked for).
    """
    runs: list[Run] = []
    for path in map(Path, paths):
        if (path / "metrics.json").is_file():
            runs.append(_train_run(path, path.name))
        elif (path / "cv.json").is_file():
            runs.append(_cv_run(path, path.name))
        elif (path / "study.json").is_file():
            study = load_result(path / "study.json", StudyResult)
            for index, row in enumerate(study.rows, start=1):
                runs.append(_train_run(path / f"row{index:02d}", f"{path.name}/{row.row}"))
        elif (path / "compress.json").is_file():
            runs += _compress_runs(path)
        elif path.is_dir():
            raise DataError(f"'{path}' holds no metrics.json, cv.json, study.json or compress.json; pass "
                            f"the folder that bitsound train, cv, study or compress wrote (their --out)")
        else:
            raise DataError(f"run folder '{path}' does not exist")
    runs = _without_repeated_inputs(runs)
    names = [r.name for r in runs]
    for run in runs:
        if names.count(run.name) > 1:  # two folders of the same name: tell them apart by path
            run.name = str(run.path)
        if run.model_path is not None:
            run.complexity = _complexity(run.model_path)
        engines = _engine_files(run)
        if engines and measure_engine and run.model_path is not None and run.model_path.is_file():
            from bitsound.report.speed import engine_speed

            run.engine_path = engines[0]
            run.engine = engine_speed(engines[0], run.model_path)
    return runs


def _without_repeated_inputs(runs: list[Run]) -> list[Run]:
    """Drop a compress folder's input stage (row 0) when its input model is a run of the report
    itself: the same model twice would sit on itself in the plots. Its section still lists it."""
    trained = {r.model_path.resolve() for r in runs if r.model_path is not None}
    return [r for r in runs if not (r.stage is not None and r.stage.kind == "input"
                                    and Path(r.compress.model).resolve() in trained)]


def _engine_files(run: Run) -> list[Path]:
    """``.bsnn`` files of a run: beside its results (train: ``model.pt``; cv: ``cv.json``), else
    in its first fold's folder (cv). Compress stages carry their engine numbers in their rows."""
    if run.kind == "compress":
        return []
    for folder in (run.path, *(f.path for f in run.folds[:1])):
        found = sorted(folder.glob("*.bsnn"))
        if found:
            return found
    return []


__all__ = ["FoldRun", "Run", "load_runs", "read_history"]
