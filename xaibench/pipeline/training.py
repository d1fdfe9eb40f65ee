"""Training and inference loops shared by every backbone: plain PyTorch, deterministic for a seed.

Images arrive as arrays (N, H, W, C), uint8 or float32, and are converted once to float (N, C, H, W) in [0, 1].
Augmentation draws one of the 8 dihedral transforms per sample (aerial tiles have no canonical
orientation) and applies it to the image and its foreground mask alike.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from xaibench.errors import StageError, UserError
from xaibench.pipeline.grid import TrainConfig


def to_tensor(images: np.ndarray):
    """(N, H, W, C) images → float32 tensor (N, C, H, W) in [0, 1]: uint8 pixels divided by 255, float32
    ones (already in [0, 1]) as they are."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    return tensor.float().div_(255.0) if tensor.dtype == torch.uint8 else tensor.float()


def to_device(tensor, device: str):
    """``tensor`` on ``device``; to a GPU through pinned memory and without waiting for the copy (it overlaps
    the work queued before it, and nothing on the host waits for it)."""
    import torch

    if torch.device(device).type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def resolve_device(device: str, *, what: str = "device") -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``; a CUDA device on a machine without CUDA is a
    ``UserError`` naming ``what`` (the parameter that asked for it)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{what}={device!r} but CUDA is not available on this machine; use auto or cpu")
    return device


def _dihedral(x, codes):
    """Apply per-sample dihedral transforms: bit 0 = horizontal flip, 1 = vertical flip, 2 = transpose."""
    import torch

    def pick(bit, transformed):
        chosen = ((codes >> bit) & 1).bool().view(-1, *([1] * (x.dim() - 1)))
        return torch.where(chosen, transformed, x)

    x = pick(0, x.flip(-1))
    x = pick(1, x.flip(-2))
    if x.shape[-1] == x.shape[-2]:
        x = pick(2, x.transpose(-1, -2))
    return x


def fit(
    model,
    images,
    labels: np.ndarray,
    config: TrainConfig,
    *,
    seed: int,
    device: str,
    foreground=None,
    mask_fn: Callable | None = None,
    subset: np.ndarray | None = None,
    progress: Callable | None = None,
    checkpoint: Path | None = None,
) -> dict:
    """Train ``model`` in place with cross-entropy under ``config`` (a grid's ``train`` or ``finetune``
    settings); returns statistics.

    ``checkpoint``: a file where the model, the optimizer, the random generators and the epoch are saved
    (atomically) after every ``config.checkpoint_every`` epochs (0: never), once at least
    ``config.checkpoint_seconds`` have passed since the last save (or the start). When it exists at the start, training
    resumes from it and ends bitwise identical to an uninterrupted run (the same device and thread
    count); the caller removes it once the trained model is saved.

    ``images``: (N, H, W, C), uint8 or float32 in [0, 1] (``to_tensor``), an array or anything indexed by a batch of rows (``artifacts.Rows``):
    only the rows of one batch are ever read and converted to float, so a split need not fit in memory.
    ``subset``: the indices of the samples trained on (default all). ``foreground`` (bool rows (N, H, W),
    indexed the same way) and ``mask_fn`` (a Mask component) together make masked training: each augmented
    batch is masked on the device before the forward pass. ``config.precision="bf16"`` runs the
    forward pass under bfloat16 autocast; ``config.channels_last`` keeps model and batches in NHWC layout.
    ``progress(n)`` is called after every step with the number of images processed. Raises ``StageError``
    on a non-finite loss and when a step runs out of memory (CUDA out-of-memory, ``MemoryError``), saying
    to lower the batch size."""
    import torch

    epochs, batch_size, lr, weight_decay = config.epochs, config.batch_size, config.lr, config.weight_decay
    optimizer, augment, precision, channels_last = config.optimizer, config.augment, config.precision, \
        config.channels_last
    checkpoint_every, checkpoint_seconds = config.checkpoint_every, config.checkpoint_seconds
    generator = torch.Generator().manual_seed(seed)
    labels = np.asarray(labels, dtype=np.int64)
    samples = np.arange(len(labels)) if subset is None else np.asarray(subset, dtype=np.int64)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format).train()
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                              enabled=precision == "bf16")
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    n = len(samples)
    steps_per_epoch = math.ceil(n / batch_size)
    losses: list[float] = []
    first = 0
    if checkpoint is not None and Path(checkpoint).is_file():
        first, losses = _resume(checkpoint, model, opt, generator, device)
        if progress is not None:
            progress(first * n)
    # The host reads nothing from the device within an epoch (no synchronisation per batch): the epoch's
    # loss sum and its first non-finite step (with that loss and whether the logits were finite) stay on
    # the device and are read once, at the epoch's end. On CUDA the batches go through pinned memory
    # (``to_device``).
    start = last_save = time.perf_counter()
    for epoch in range(first, epochs):
        order = torch.randperm(n, generator=generator)
        epoch_loss = torch.zeros((), dtype=torch.float64, device=device)
        first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        bad_loss = torch.zeros((), device=device)
        bad_logits = torch.zeros((), dtype=torch.bool, device=device)
        for step in range(steps_per_epoch):
            index = order[step * batch_size : (step + 1) * batch_size]
            rows = samples[index.numpy()]
            x = to_device(to_tensor(images[rows]), device)
            y = to_device(torch.from_numpy(labels[rows]), device)
            fg = to_device(torch.from_numpy(np.asarray(foreground[rows], dtype=bool))[:, None], device) \
                if foreground is not None else None
            if augment:
                codes = to_device(torch.randint(0, 8, (len(index),), generator=generator), device)
                x = _dihedral(x, codes)
                fg = _dihedral(fg, codes) if fg is not None else None
            try:
                if mask_fn is not None:
                    x = mask_fn(x, fg)
                with autocast:
                    logits = model(x.contiguous(memory_format=memory_format))
                loss = torch.nn.functional.cross_entropy(logits.float(), y)
                new_bad = (first_bad < 0) & ~torch.isfinite(loss)
                first_bad = torch.where(new_bad, step, first_bad)
                bad_loss = torch.where(new_bad, loss.detach(), bad_loss)
                bad_logits = torch.where(new_bad, ~torch.isfinite(logits.detach()).all(), bad_logits)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            except (RuntimeError, MemoryError) as exc:  # torch.cuda.OutOfMemoryError is a RuntimeError
                if not _out_of_memory(exc):
                    raise
                detail = (str(exc).splitlines() or [""])[0]
                raise StageError(
                    f"training ran out of memory on {device} at epoch {epoch + 1}, step {step + 1} of "
                    f"{steps_per_epoch} with batch_size {batch_size} ({type(exc).__name__}: {detail}); "
                    "lower batch_size in the grid's train/finetune section, or the dataset's image_size"
                ) from exc
            epoch_loss += loss.detach().double() * len(index)
            if progress is not None:
                progress(len(index))
        bad_step = int(first_bad)  # the epoch's one read from the device
        if bad_step >= 0:
            cause = "the model gave non-finite logits (NaN or inf); if the model is sound, " if bool(bad_logits) else ""
            raise StageError(f"training loss became {float(bad_loss)} at epoch {epoch + 1}, step {bad_step + 1}: "
                             f"{cause}lower the learning rate")
        losses.append(float(epoch_loss) / n)
        if (checkpoint is not None and checkpoint_every and (epoch + 1) % checkpoint_every == 0 and epoch + 1 < epochs
                and time.perf_counter() - last_save >= checkpoint_seconds):
            _save_checkpoint(checkpoint, model, opt, generator, epoch + 1, losses)
            last_save = time.perf_counter()
    seconds = time.perf_counter() - start
    trained = n * (epochs - first)
    return {
        "epoch_losses": losses,
        "images_seen": n * epochs,
        "resumed_from_epoch": first,
        "seconds": seconds,
        "images_per_second": trained / seconds if seconds > 0 and trained else None,
    }


def _save_checkpoint(path: Path, model, opt, generator, epoch: int, losses: list[float]) -> None:
    """Everything a resumed training needs, written to a temporary file and renamed into place."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"epoch": epoch, "losses": list(losses), "model": model.state_dict(), "optimizer": opt.state_dict(),
             "generator": generator.get_state(), "torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _resume(path: Path, model, opt, generator, device) -> tuple[int, list[float]]:
    """Load a checkpoint into the model, optimizer and generators; ``(epochs done, their losses)``. A file
    that cannot be read (tensors only) is ignored: training starts over."""
    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        epoch, losses = int(state["epoch"]), [float(v) for v in state["losses"]]
        parts = state["model"], state["optimizer"], state["generator"], state["torch_rng"]
    except Exception as exc:  # a damaged checkpoint costs the epochs it held, never a wrong model
        warnings.warn(f"checkpoint {path} cannot be resumed from ({type(exc).__name__}: {exc}); training starts "
                      f"over")
        Path(path).unlink(missing_ok=True)
        return 0, []
    try:
        model.load_state_dict(parts[0])
        opt.load_state_dict(parts[1])
        generator.set_state(parts[2])
        torch.set_rng_state(parts[3])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
    except Exception as exc:
        raise StageError(f"checkpoint {path} does not belong to this training ({type(exc).__name__}: {exc}); delete "
                         f"it and run again") from exc
    model.to(device)
    return epoch, losses


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` reports exhausted device or host memory."""
    import torch

    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom_type is not None and isinstance(exc, oom_type)) or isinstance(exc, MemoryError) \
        or "out of memory" in str(exc).lower()


def predict_logits(model, images: np.ndarray, *, batch_size: int, device: str) -> np.ndarray:
    """float32 logits (N, C) of ``model`` in eval mode, without gradients."""
    import torch

    model.to(device).eval()
    out = []
    with torch.no_grad():  # the logits stay on the device until the last batch: no synchronisation per batch
        for start in range(0, len(images), batch_size):
            out.append(model(to_device(to_tensor(images[start : start + batch_size]), device)).float())
    return torch.cat(out).cpu().numpy() if out else np.zeros((0, 0), dtype=np.float32)
