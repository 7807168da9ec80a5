//! Finding the CUDA, cuDNN and TensorRT libraries where their PyPI wheels put them.
//!
//! `pip install onnxruntime-gpu nvidia-cudnn-cu13 tensorrt-cu13-libs ...` puts ONNX Runtime in
//! `site-packages/onnxruntime/capi/`, NVIDIA's libraries in `site-packages/nvidia/cu13/lib/`
//! (the CUDA 13 wheels: runtime, cuBLAS, cuFFT, cuRAND, NVRTC share one folder) or
//! `site-packages/nvidia/<part>/lib/` (the CUDA 12 `-cu12` wheels, one folder each), cuDNN's in
//! `site-packages/nvidia/cudnn/lib/`, and TensorRT's in `site-packages/tensorrt_libs/`. None of those folders is on the dynamic
//! loader's path, and the provider libraries (`libonnxruntime_providers_cuda.so`, `..._tensorrt.so`)
//! ask for them by soname (`libcudnn.so.9`). Loading them by full path first makes the loader
//! find them by soname, which is what ONNX Runtime's own Python package does
//! (`onnxruntime.preload_dylibs`). Libraries on the system path need none of this.

use std::path::{Path, PathBuf};

/// The `site-packages/nvidia/<part>/lib` folders that the CUDA and TensorRT providers draw on,
/// in the order they are loaded (dependencies first): CUDA 13's shared folder, CUDA 12's one per
/// library, then cuDNN.
const NVIDIA_PARTS: &[&str] =
    &["cu13", "cu12", "cuda_runtime", "cuda_nvrtc", "nvjitlink", "cublas", "cufft", "curand", "cudnn"];
/// TensorRT's wheel (`tensorrt-cu12-libs`) keeps its libraries here, beside `nvidia/`.
const TENSORRT_FOLDER: &str = "tensorrt_libs";

/// The wheel library folders that exist beside the ONNX Runtime library at `ort_library`: the
/// `site-packages` holding it is the nearest ancestor with an `nvidia/` or `tensorrt_libs/`
/// folder. Empty when ONNX Runtime is not installed from a wheel.
pub fn wheel_library_dirs(ort_library: &Path) -> Vec<PathBuf> {
    let Some(site) = ort_library
        .ancestors()
        .skip(1)
        .take(4)
        .find(|dir| dir.join("nvidia").is_dir() || dir.join(TENSORRT_FOLDER).is_dir())
    else {
        return Vec::new();
    };
    NVIDIA_PARTS
        .iter()
        .map(|part| site.join("nvidia").join(part).join("lib"))
        .chain(std::iter::once(site.join(TENSORRT_FOLDER)))
        .filter(|dir| dir.is_dir())
        .collect()
}

/// Shared libraries (`lib*.so*`) in `dirs`, in folder order then name order.
pub fn libraries_in(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        let mut names: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("lib") && n.contains(".so"))
            })
            .collect();
        names.sort();
        found.extend(names);
    }
    found
}

/// Loads every library with `load`, again and again while some load that did not before (one
/// may need another that comes later in the list). Returns the ones that never loaded, each
/// with its last error.
pub fn preload(
    libraries: Vec<PathBuf>,
    mut load: impl FnMut(&Path) -> Result<(), String>,
) -> Vec<(PathBuf, String)> {
    let mut pending: Vec<(PathBuf, String)> = libraries.into_iter().map(|p| (p, String::new())).collect();
    loop {
        let before = pending.len();
        pending.retain_mut(|(path, error)| match load(path) {
            Ok(()) => false,
            Err(e) => {
                *error = e;
                true
            }
        });
        if pending.is_empty() || pending.len() == before {
            return pending;
        }
    }
}

/// The PyPI package that ships a library the dynamic loader could not find, read from its
/// message (`libcudnn.so.9: cannot open shared object file: ...`): the soname and the package.
/// CUDA libraries name their CUDA major version (`libcudart.so.13`) and so their wheel; cuDNN
/// and TensorRT come in a wheel per CUDA version, which the message cannot tell.
pub fn missing_library(loader_error: &str) -> Option<(String, String)> {
    const CUDA: &[(&str, &str)] = &[
        ("libcublas", "nvidia-cublas"),
        ("libcudart", "nvidia-cuda-runtime"),
        ("libcufft", "nvidia-cufft"),
        ("libcurand", "nvidia-curand"),
        ("libnvrtc", "nvidia-cuda-nvrtc"),
        ("libnvJitLink", "nvidia-nvjitlink"),
    ];
    let (soname, _) = loader_error.split_once(": cannot open shared object file")?;
    let soname = soname.rsplit(": ").next().unwrap_or(soname).trim().to_string();
    let package = if soname.starts_with("libcudnn") {
        "nvidia-cudnn-cu13 (nvidia-cudnn-cu12 for a CUDA 12 build of onnxruntime-gpu)".to_string()
    } else if soname.starts_with("libnvinfer") || soname.starts_with("libnvonnxparser") {
        "tensorrt-cu13-libs (tensorrt-cu12-libs for a CUDA 12 build of onnxruntime-gpu)".to_string()
    } else {
        let (_, base) = CUDA.iter().find(|(prefix, _)| soname.starts_with(prefix))?;
        // CUDA 12's wheels carry a -cu12 suffix; CUDA 13's do not.
        if soname.ends_with(".so.12") || soname.contains(".so.12.") {
            format!("{base}-cu12")
        } else {
            base.to_string()
        }
    };
    Some((soname, package))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rtserve-wheels-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, b"x").expect("write");
    }

    #[test]
    fn finds_the_wheels_beside_onnxruntime() {
        let site = temp_dir("layout");
        let ort = site.join("onnxruntime/capi/libonnxruntime.so.1.23.2");
        touch(&ort);
        touch(&site.join("nvidia/cudnn/lib/libcudnn.so.9"));
        touch(&site.join("nvidia/cudnn/lib/libcudnn_ops.so.9"));
        touch(&site.join("nvidia/cuda_runtime/lib/libcudart.so.12"));
        touch(&site.join("nvidia/nccl/lib/libnccl.so.2"));
        touch(&site.join("nvidia/cudnn/include/cudnn.h"));
        touch(&site.join("tensorrt_libs/libnvinfer.so.10"));

        let dirs = wheel_library_dirs(&ort);
        let expected: Vec<PathBuf> = ["nvidia/cuda_runtime/lib", "nvidia/cudnn/lib", "tensorrt_libs"]
            .iter()
            .map(|d| site.join(d))
            .collect();
        assert_eq!(dirs, expected, "dependencies first, parts the providers do not use left out");
        let names: Vec<String> = libraries_in(&dirs)
            .iter()
            .map(|p| p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string())
            .collect();
        assert_eq!(names, ["libcudart.so.12", "libcudnn.so.9", "libcudnn_ops.so.9", "libnvinfer.so.10"]);

        let elsewhere = temp_dir("system");
        touch(&elsewhere.join("lib/libonnxruntime.so"));
        assert!(wheel_library_dirs(&elsewhere.join("lib/libonnxruntime.so")).is_empty());
        let _ = std::fs::remove_dir_all(&site);
        let _ = std::fs::remove_dir_all(&elsewhere);
    }

    #[test]
    fn preload_retries_until_dependencies_are_in() {
        // c needs b, b needs a; listed in the wrong order. d never loads.
        let libraries: Vec<PathBuf> = ["c", "b", "d", "a"].iter().map(PathBuf::from).collect();
        let mut loaded: Vec<String> = Vec::new();
        let failed = preload(libraries, |path| {
            let name = path.to_string_lossy().to_string();
            let needs = match name.as_str() {
                "c" => Some("b"),
                "b" => Some("a"),
                "d" => return Err("d: cannot open shared object file".to_string()),
                _ => None,
            };
            match needs {
                Some(dep) if !loaded.iter().any(|l| l == dep) => Err(format!("{dep} missing")),
                _ => {
                    loaded.push(name);
                    Ok(())
                }
            }
        });
        assert_eq!(loaded, ["a", "b", "c"]);
        assert_eq!(failed, vec![(PathBuf::from("d"), "d: cannot open shared object file".to_string())]);
    }

    #[test]
    fn names_the_missing_library_and_its_wheel() {
        let glibc = "/site/onnxruntime/capi/libonnxruntime_providers_cuda.so: libcudnn.so.9: \
                     cannot open shared object file: No such file or directory";
        let (soname, package) = missing_library(glibc).expect("cudnn");
        assert_eq!(soname, "libcudnn.so.9");
        assert!(package.starts_with("nvidia-cudnn-cu13 (nvidia-cudnn-cu12 for a CUDA 12"), "{package}");
        let trt = "libnvinfer.so.10: cannot open shared object file: No such file or directory";
        let (soname, package) = missing_library(trt).expect("tensorrt");
        assert_eq!(soname, "libnvinfer.so.10");
        assert!(package.starts_with("tensorrt-cu13-libs"), "{package}");
        let cuda13 = "libcublasLt.so.13: cannot open shared object file: No such file or directory";
        assert_eq!(
            missing_library(cuda13),
            Some(("libcublasLt.so.13".to_string(), "nvidia-cublas".to_string()))
        );
        let cuda12 = "libcudart.so.12: cannot open shared object file: No such file or directory";
        assert_eq!(
            missing_library(cuda12),
            Some(("libcudart.so.12".to_string(), "nvidia-cuda-runtime-cu12".to_string()))
        );
        assert_eq!(missing_library("libfoo.so.1: cannot open shared object file"), None);
        assert_eq!(missing_library("undefined symbol: cudaGraphExecUpdate"), None);
    }
}
