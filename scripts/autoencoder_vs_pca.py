#!/usr/bin/env python
"""Autoencoders against PCA on MNIST (book figures 6-10, 6-11; Hinton & Salakhutdinov 2006).

    python scripts/autoencoder_vs_pca.py --ae2 outputs/.../ae2.ckpt --ae30 outputs/.../ae30.ckpt \\
        [--denoising outputs/.../denoising.ckpt] [--out DIR] [--knn-k 5] [--metrics-json FILE]
    python scripts/reproduce.py --only ch6_autoencoder_vs_pca   # on the pipeline's runs of those three

Writes to --out (default outputs/autoencoder_vs_pca): codes_2d.png (2-d test codes, PCA vs
autoencoder), reconstructions_30d.png (original / PCA-30 / AE-30), denoising.png, and
autoencoder_vs_pca.md: test L2 and SSE of PCA and each autoencoder, k-NN accuracy on the codes,
and errors on test images with pixels dropped (the denoising model against the plain one).
PCA is scikit-learn's, fit on the checkpoints' training images. Needs scikit-learn
(pip install -e ".[analysis]"). --metrics-json also writes the table as numbers named
``<model>/<measure>`` (``pca-30/sse``, ``autoencoder-2/knn``, ...; the results pipeline's row).
"""

import argparse
import os
import sys

from fodl.analysis.autoencoder import compare
from fodl.config import default_data_dir
from fodl.errors import reports_errors


@reports_errors
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ae2", help="checkpoint of an autoencoder with a 2-d code")
    ap.add_argument("--ae30", help="checkpoint of an autoencoder with a 30-d code")
    ap.add_argument("--denoising", help="checkpoint of a denoising autoencoder (model.noise_fraction>0)")
    ap.add_argument("--out", default=None, help="default: the --metrics-json file's directory, "
                    "else outputs/autoencoder_vs_pca")
    ap.add_argument("--knn-k", type=int, default=5)
    ap.add_argument("--noise-fraction", type=float, default=None,
                    help="pixels dropped from test images (default: the denoising model's, else none)")
    ap.add_argument("--n-scatter", type=int, default=5000, help="test images in the 2-d scatter")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=default_data_dir())
    ap.add_argument("--metrics-json", help="also write the table's numbers here")
    args = ap.parse_args()
    out = args.out or (os.path.dirname(os.path.abspath(args.metrics_json)) if args.metrics_json
                       else "outputs/autoencoder_vs_pca")
    result = compare(out, args.ae2, args.ae30, args.denoising, args.data_dir, args.knn_k,
                     args.noise_fraction, args.n_scatter, seed=args.seed)
    print(result.markdown())
    if args.metrics_json:
        from fodl.train import write_metrics

        write_metrics(args.metrics_json, result.metrics())
    for path in result.figures:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
