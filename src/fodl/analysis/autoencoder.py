"""Autoencoders against PCA on MNIST (book figures 6-10 and 6-11, Hinton & Salakhutdinov 2006).

From trained checkpoints of a 2-d and a 30-d autoencoder (and optionally a denoising one),
with scikit-learn's PCA fit on the same training images:

- the 2-d test codes of both, coloured by digit, side by side (figure 6-11);
- test images, their PCA-30 and AE-30 reconstructions (figure 6-10);
- a table of test mean per-image L2 and SSE, k-NN accuracy on the codes, and errors on
  corrupted test images (the denoising autoencoder against the plain one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fodl.checkpoint import load_run
from fodl.errors import FodlError
from fodl.models.autoencoder import AutoencoderModule, eval_corrupt, per_image_sse


def load_autoencoder(path: str | Path, data_dir: str | None = None, code_size: int | None = None,
                     option: str = "checkpoint"):
    """``(module, datamodule)`` of an autoencoder checkpoint, in eval mode, data set up; a
    ``FodlError`` naming ``option`` when the file holds another model or code size."""
    module, dm, cfg = load_run(path, data_dir, "fit")
    if not isinstance(module, AutoencoderModule):
        raise FodlError(
            f"{option} {path} is a checkpoint of {type(module).__name__} (model="
            f"{cfg.get('model_name') or '?'}), not of an autoencoder. Give a checkpoint of a run "
            "with model=autoencoder or experiment=book/ch6_* (outputs/autoencoder/runs/<time>/"
            "checkpoints/*.ckpt).")
    have = getattr(module.net, "code_size", None)
    if code_size is not None and have != code_size:
        raise FodlError(
            f"{option} needs an autoencoder with a {code_size}-d code, but {path} has a {have}-d "
            f"code. Train one with model.net.code_size={code_size} (e.g. experiment=book/"
            f"ch6_autoencoder{'_2d' if code_size == 2 else ''}), or pass this file to the other option.")
    if not {"train", "test"} <= set(getattr(dm, "splits", {})) or module.net.in_features != 784:
        raise FodlError(f"{option} {path}: this analysis compares autoencoders of 28x28 MNIST "
                        f"images, and this one was trained on {type(dm).__name__} with "
                        f"{module.net.in_features} inputs. Give a checkpoint of an MNIST autoencoder.")
    return module.eval(), dm


@torch.no_grad()
def _batched(fn, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch_size], i // batch_size) for i in range(0, len(x), batch_size)])


def encode(module: AutoencoderModule, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    return _batched(lambda b, _: module.net.encode(b), x, batch_size)


def reconstruct(module: AutoencoderModule, x: torch.Tensor, batch_size: int = 1000,
                noise_fraction: float = 0.0) -> torch.Tensor:
    """Flat reconstructions of ``x``; with ``noise_fraction``, of ``x`` corrupted exactly as
    the module's test step corrupts it (same batches, same pixels)."""
    if noise_fraction:
        return _batched(lambda b, i: module.net(eval_corrupt(b, noise_fraction, i)), x, batch_size)
    return _batched(lambda b, _: module.net(b), x, batch_size)


def corrupted(x: torch.Tensor, noise_fraction: float, batch_size: int = 1000) -> torch.Tensor:
    """``x`` corrupted as the test step corrupts it, batch by batch."""
    return _batched(lambda b, i: eval_corrupt(b, noise_fraction, i).flatten(1), x, batch_size)


def errors(x_hat: torch.Tensor, x: torch.Tensor) -> tuple[float, float]:
    """(mean per-image L2 norm, mean per-image sum of squares) of the reconstruction error."""
    sse = per_image_sse(x_hat, x)
    return float(sse.sqrt().mean()), float(sse.mean())


class PCA:
    """scikit-learn's PCA on flat images (fit once, codes and reconstructions as tensors)."""

    def __init__(self, n_components: int, train_x: torch.Tensor, seed: int = 0) -> None:
        from sklearn.decomposition import PCA as SkPCA

        self.n_components = n_components
        self.pca = SkPCA(n_components=n_components, random_state=seed).fit(train_x.flatten(1).numpy())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.pca.transform(x.flatten(1).numpy())).float()

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.pca.inverse_transform(self.pca.transform(x.flatten(1).numpy()))).float()


def knn_accuracy(train_codes, train_y, test_codes, test_y, k: int = 5) -> float:
    """Accuracy of a k-nearest-neighbour classifier fit on training codes, on test codes."""
    from sklearn.neighbors import KNeighborsClassifier

    clf = KNeighborsClassifier(n_neighbors=k).fit(np.asarray(train_codes), np.asarray(train_y))
    return float(clf.score(np.asarray(test_codes), np.asarray(test_y)))


@dataclass
class Row:
    """One line of the comparison table (None: not measured)."""

    name: str
    code: int
    l2: float
    sse: float
    knn: float | None = None
    l2_corrupted: float | None = None
    sse_corrupted: float | None = None


@dataclass
class Comparison:
    rows: list[Row] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    knn_k: int = 5
    noise_fraction: float | None = None
    n_train: int = 0
    n_test: int = 0

    def metrics(self) -> dict[str, float]:
        """The table as ``<model>/<measure>`` numbers (``pca-30/sse``, ``autoencoder-2/knn``,
        ``denoising_autoencoder-30/l2_corrupted`` ...), what measured only."""
        out = {}
        for r in self.rows:
            name = r.name.lower().replace(" ", "_")
            for key in ("l2", "sse", "knn", "l2_corrupted", "sse_corrupted"):
                if (v := getattr(r, key)) is not None:
                    out[f"{name}/{key}"] = float(v)
        return out

    def markdown(self) -> str:
        corrupt = self.noise_fraction is not None
        pct = f"{self.noise_fraction:.0%}" if corrupt else ""
        head = ["model", "code", "test L2", "test SSE", f"{self.knn_k}-NN acc. on codes"]
        if corrupt:
            head += [f"test L2, {pct} pixels dropped", f"test SSE, {pct} pixels dropped"]

        def f(v, fmt):
            return "-" if v is None else format(v, fmt)

        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            cells = [r.name, str(r.code), f(r.l2, ".3f"), f(r.sse, ".2f"), f(r.knn, ".2%")]
            if corrupt:
                cells += [f(r.l2_corrupted, ".3f"), f(r.sse_corrupted, ".2f")]
            lines.append("| " + " | ".join(cells) + " |")
        lines += [
            "",
            f"MNIST test set ({self.n_test} images); PCA and k-NN fit on the {self.n_train} "
            "training images. L2: mean over images of ||x_hat - x||_2 (the book's loss; its "
            "30-d autoencoder: validation 1.75). SSE: mean per-image sum of squared errors "
            "(Hinton & Salakhutdinov 2006, 30-d: deep autoencoder 3.00, PCA 13.87).",
        ]
        if corrupt:
            lines.append(f"Corrupted: exactly {pct} of each test image's pixels set to 0 (the same "
                         "pixels for every model); errors are against the clean image.")
        return "\n".join(lines) + "\n"


def compare(out_dir: str | Path, ae2: str | None = None, ae30: str | None = None,
            denoising: str | None = None, data_dir: str | None = None, knn_k: int = 5,
            noise_fraction: float | None = None, n_scatter: int = 5000, n_images: int = 10,
            seed: int = 0) -> Comparison:
    """Everything of the module docstring; writes the figures and ``autoencoder_vs_pca.md``
    to ``out_dir`` and returns the table."""
    if not (ae2 or ae30 or denoising):
        raise FodlError("Give at least one checkpoint: --ae2 (a 2-d code autoencoder), --ae30 "
                        "(30-d) and/or --denoising.")
    models = {}
    for option, path, size in (("--ae2", ae2, 2), ("--ae30", ae30, 30), ("--denoising", denoising, None)):
        if path:
            models[option] = load_autoencoder(path, data_dir, size, option)
    dm = next(iter(models.values()))[1]
    x_train, y_train = dm.splits["train"]
    x_test, y_test = dm.splits["test"]
    batch = getattr(dm, "eval_batch_size", 1000)
    if denoising and noise_fraction is None:
        noise_fraction = models["--denoising"][0].noise_fraction or 0.5
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = Comparison(knn_k=knn_k, noise_fraction=noise_fraction, n_train=len(x_train),
                        n_test=len(x_test))

    def row(name, code, rec, train_codes, test_codes, rec_corrupted):
        r = Row(name, code, *errors(rec, x_test))
        if train_codes is not None:
            r.knn = knn_accuracy(train_codes, y_train, test_codes, y_test, knn_k)
        if rec_corrupted is not None:
            r.l2_corrupted, r.sse_corrupted = errors(rec_corrupted, x_test)
        result.rows.append(r)

    x_corrupted = corrupted(x_test, noise_fraction, batch) if noise_fraction else None
    pcas = {}
    for option, code in (("--ae2", 2), ("--ae30", 30)):
        if option not in models:
            continue
        module = models[option][0]
        pca = pcas[code] = PCA(code, x_train, seed)
        row(f"PCA-{code}", code, pca.reconstruct(x_test), pca.encode(x_train), pca.encode(x_test),
            None if x_corrupted is None else pca.reconstruct(x_corrupted))
        row(f"autoencoder-{code}", code, reconstruct(module, x_test, batch), encode(module, x_train, batch),
            encode(module, x_test, batch),
            None if x_corrupted is None else reconstruct(module, x_test, batch, noise_fraction))
    if "--denoising" in models:
        module = models["--denoising"][0]
        code = module.net.code_size
        row(f"denoising autoencoder-{code}", code, reconstruct(module, x_test, batch),
            encode(module, x_train, batch), encode(module, x_test, batch),
            reconstruct(module, x_test, batch, noise_fraction))

    import matplotlib

    matplotlib.use("Agg")
    gen = torch.Generator().manual_seed(seed)
    if "--ae2" in models:
        idx = torch.randperm(len(x_test), generator=gen)[:n_scatter]
        result.figures.append(scatter_figure(
            pcas[2].encode(x_test[idx]), encode(models["--ae2"][0], x_test[idx], batch), y_test[idx],
            out / "codes_2d.png"))
    show = torch.randperm(len(x_test), generator=gen)[:n_images]
    if "--ae30" in models:
        result.figures.append(image_rows(
            {"original": x_test[show], "PCA-30": pcas[30].reconstruct(x_test[show]),
             "autoencoder-30": reconstruct(models["--ae30"][0], x_test[show], batch)},
            out / "reconstructions_30d.png"))
    if "--denoising" in models:
        rows = {f"{noise_fraction:.0%} dropped": x_corrupted[show],
                "denoising AE": reconstruct(models["--denoising"][0], x_corrupted[show], batch)}
        if "--ae30" in models:
            rows["plain AE-30"] = reconstruct(models["--ae30"][0], x_corrupted[show], batch)
        rows["original"] = x_test[show]
        result.figures.append(image_rows(rows, out / "denoising.png"))
    (out / "autoencoder_vs_pca.md").write_text(result.markdown())
    return result


def scatter_figure(pca_codes, ae_codes, labels, path: Path) -> Path:
    """Figure 6-11: 2-d codes of PCA (left) and the autoencoder (right), coloured by digit."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 6))
    labels = np.asarray(labels)
    for ax, codes, title in ((axes[0], pca_codes, "PCA"), (axes[1], ae_codes, "autoencoder")):
        codes = np.asarray(codes)
        for digit in range(10):
            m = labels == digit
            ax.scatter(codes[m, 0], codes[m, 1], s=3, color=plt.cm.tab10(digit), label=str(digit))
        ax.set(title=f"{title}: 2-d codes of {len(labels)} test images", xticks=[], yticks=[])
    axes[1].legend(markerscale=5, fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def image_rows(rows: dict[str, torch.Tensor], path: Path) -> Path:
    """One row of 28x28 images per entry (figure 6-10's layout), labelled on the left."""
    import matplotlib.pyplot as plt

    n = len(next(iter(rows.values())))
    fig, axes = plt.subplots(len(rows), n, figsize=(1.1 * n + 1.2, 1.15 * len(rows)), squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        images = torch.as_tensor(images).reshape(n, 28, 28).clamp(0, 1)
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(images[c].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
