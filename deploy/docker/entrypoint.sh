#!/bin/sh
# One image, three roles: `dask scheduler|worker ...` (also the Helm chart's `dask-scheduler`/`dask-worker`),
# any other program on PATH (`python`, `sh`), and otherwise `dicom-deid ARGS` (`run`, `finalize`, `--help`).
set -eu
case "${1:-}" in
    dask-scheduler | dask-worker)
        role="${1#dask-}"
        shift
        exec dask "$role" "$@"
        ;;
    "" | -*)
        exec dicom-deid "$@"
        ;;
esac
case "$(command -v "$1" || true)" in
    /*) exec "$@" ;;
    *) exec dicom-deid "$@" ;;
esac
