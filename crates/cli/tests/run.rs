//! `rtserve run` end to end: the real binary on the example models, fed `.npy`, `.npz`, images
//! and stdin, its outputs compared with the NumPy reference in `tests/data/expected/` (within
//! 1e-4, absolute plus relative), on tract and on ONNX Runtime (skipped with a note when ONNX
//! Runtime is missing, unless `RTSERVE_E2E_REQUIRE_ONNXRUNTIME` is set). Bad inputs exit with
//! code 2 and a model that does not load with 1, with a message and no panic.

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use image::{ImageFormat, Rgb, RgbImage};
use rtserve_bench::npy::{parse_npy, write_npy};
use rtserve_bench::values::Values;
use rtserve_core::DataType;
use serde_json::Value;

#[path = "support/pixels_model.rs"]
mod pixels_model;

use pixels_model::{write_pixels_model, SIDE};

/// Absolute plus relative tolerance against the NumPy reference (float32 through two engines).
const TOLERANCE: f64 = 1e-4;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn example(name: &str) -> PathBuf {
    root().join(format!("examples/model_repository/{name}/1/model.onnx"))
}

/// `tests/data/expected/<name>.json`: the reference inputs and outputs.
fn expected(name: &str) -> Value {
    let path = root().join(format!("tests/data/expected/{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("expected JSON")
}

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Runs `rtserve run ARGS`, with `stdin` piped in when given.
fn rtserve(args: &[&str], stdin: Option<&[u8]>) -> Output {
    rtserve_logging(args, stdin, "warn")
}

/// Runs `rtserve run ARGS` with `RUST_LOG` set to `rust_log`.
fn rtserve_logging(args: &[&str], stdin: Option<&[u8]>, rust_log: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rtserve"))
        .arg("run")
        .args(args)
        .env_remove("RTSERVE_ENGINE")
        .env("RUST_LOG", rust_log)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rtserve run");
    if let Some(bytes) = stdin {
        child.stdin.take().expect("stdin").write_all(bytes).expect("write stdin");
    }
    let output = child.wait_with_output().expect("rtserve run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    output
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The JSON lines of a successful run.
fn lines(output: &Output) -> Vec<Value> {
    assert!(output.status.success(), "failed: {}", stderr(output));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The stderr of a run that must fail with `code`.
fn fails(output: &Output, code: i32) -> String {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(code), "stderr: {err}");
    assert!(output.stdout.is_empty(), "printed {:?}", String::from_utf8_lossy(&output.stdout));
    assert!(err.contains("error: "), "{err}");
    err
}

/// `true` when the run may go on; `false` (after a note) when it asked for ONNX Runtime and
/// ONNX Runtime is missing, unless `RTSERVE_E2E_REQUIRE_ONNXRUNTIME` is set.
fn engine_present(output: &Output) -> bool {
    let err = stderr(output);
    if output.status.success() || !err.contains("--engine onnxruntime:") {
        return true;
    }
    if std::env::var_os("RTSERVE_E2E_REQUIRE_ONNXRUNTIME").is_some() {
        panic!("RTSERVE_E2E_REQUIRE_ONNXRUNTIME is set but ONNX Runtime is missing: {err}");
    }
    eprintln!("skipped: ONNX Runtime is missing ({err})");
    false
}

fn f64s(value: &Value) -> Vec<f64> {
    value.as_array().expect("array").iter().map(|v| v.as_f64().expect("number")).collect()
}

fn shape(value: &Value) -> Vec<usize> {
    value.as_array().expect("shape").iter().map(|v| v.as_u64().expect("dim") as usize).collect()
}

/// Writes a reference tensor (`{name, datatype, shape, data}`) as a `.npy` file's bytes.
fn npy_of(tensor: &Value) -> Vec<u8> {
    let datatype: DataType = tensor["datatype"].as_str().expect("datatype").parse().expect("known");
    let data = tensor["data"].as_array().expect("data");
    let raw: Vec<u8> = match datatype {
        DataType::Fp32 => {
            data.iter().flat_map(|v| (v.as_f64().expect("float") as f32).to_le_bytes()).collect()
        }
        DataType::Int64 => data.iter().flat_map(|v| v.as_i64().expect("int").to_le_bytes()).collect(),
        DataType::Bool => data.iter().map(|v| u8::from(v.as_bool().expect("bool"))).collect(),
        DataType::Int8 => {
            data.iter().map(|v| i8::try_from(v.as_i64().expect("int")).expect("int8") as u8).collect()
        }
        other => panic!("no reference tensors of {other}"),
    };
    write_npy(datatype, &shape(&tensor["shape"]), &raw).expect("npy")
}

/// A `.npz` file (stored zip) holding one `.npy` member per `(name, bytes)`.
fn write_npz(path: &Path, arrays: &[(&str, Vec<u8>)]) {
    let file = std::fs::File::create(path).expect("create npz");
    let mut zip = zip::ZipWriter::new(file);
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in arrays {
        zip.start_file(format!("{name}.npy"), options).expect("member");
        zip.write_all(bytes).expect("member bytes");
    }
    zip.finish().expect("finish npz");
}

/// Asserts that the JSON outputs of a run are the reference outputs, within `TOLERANCE` for
/// floats, one quantization step for INT8 (issue 17's measure against LiteRT) and exactly
/// otherwise.
fn assert_matches(outputs: &Value, reference: &Value, what: &str) {
    let outputs = outputs.as_array().expect("outputs");
    let reference = reference.as_array().expect("reference outputs");
    assert_eq!(outputs.len(), reference.len(), "{what}: {outputs:?}");
    for want in reference {
        let got = outputs.iter().find(|o| o["name"] == want["name"]).expect("every output");
        assert_eq!(got["datatype"], want["datatype"], "{what}");
        assert_eq!(got["shape"], want["shape"], "{what}");
        if want["datatype"] == "FP32" {
            for (g, w) in f64s(&got["data"]).iter().zip(f64s(&want["data"])) {
                assert!((g - w).abs() <= TOLERANCE * (1.0 + w.abs()), "{what}: {g} vs {w}");
            }
        } else if want["datatype"] == "INT8" {
            for (g, w) in f64s(&got["data"]).iter().zip(f64s(&want["data"])) {
                assert!((g - w).abs() <= 1.0, "{what}: {g} vs {w}");
            }
        } else {
            assert_eq!(got["data"], want["data"], "{what}");
        }
    }
}

#[test]
fn npy_and_npz_inputs_match_the_reference_on_each_engine() {
    let dir = tempfile::tempdir().expect("tempdir");
    for engine in ["tract", "onnxruntime"] {
        // One input, a .npy file; the config is found in the repository folder.
        for name in ["mlp", "cnn"] {
            let reference = expected(name);
            let input = dir.path().join(format!("{name}.npy"));
            std::fs::write(&input, npy_of(&reference["inputs"][0])).expect("write npy");
            let out = rtserve(&["--engine", engine, "--model", s(&example(name)), s(&input)], None);
            if !engine_present(&out) {
                return;
            }
            let results = lines(&out);
            assert_eq!(results.len(), 1);
            assert_eq!(results[0]["input"], s(&input));
            assert_matches(&results[0]["outputs"], &reference["outputs"], &format!("{name} on {engine}"));
        }
        // Several inputs in a .npz, by name: two_io (config.toml) and int_bool (no config:
        // inferred from the graph; INT64 and BOOL tensors).
        for name in ["two_io", "int_bool"] {
            let reference = expected(name);
            let arrays: Vec<(&str, Vec<u8>)> = reference["inputs"]
                .as_array()
                .expect("inputs")
                .iter()
                .map(|t| (t["name"].as_str().expect("name"), npy_of(t)))
                .collect();
            let input = dir.path().join(format!("{name}.npz"));
            write_npz(&input, &arrays);
            let out = rtserve(&["--engine", engine, "--model", s(&example(name)), s(&input)], None);
            assert_matches(&lines(&out)[0]["outputs"], &reference["outputs"], &format!("{name} on {engine}"));
        }
    }
}

#[test]
fn stdin_out_files_and_repeat() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reference = expected("mlp");
    let input = dir.path().join("x.npy");
    std::fs::write(&input, npy_of(&reference["inputs"][0])).expect("write npy");
    let mlp = example("mlp");
    let json = lines(&rtserve(&["--engine", "tract", "--model", s(&mlp), s(&input)], None));
    let output = &json[0]["outputs"][0];

    // Raw FP32 bytes on stdin with --shape: the same outputs.
    let raw: Vec<u8> =
        f64s(&reference["inputs"][0]["data"]).iter().flat_map(|v| (*v as f32).to_le_bytes()).collect();
    let args = ["--engine", "tract", "--model", s(&mlp), "--shape", "2,784", "-"];
    let from_stdin = lines(&rtserve(&args, Some(&raw)));
    assert_eq!(from_stdin[0]["input"], "-");
    assert_eq!(&from_stdin[0]["outputs"][0], output);
    // A single row without the batch dimension runs as a batch of one.
    let args = ["--engine", "tract", "--model", s(&mlp), "--shape", "784", "-"];
    let row = lines(&rtserve(&args, Some(&raw[..784 * 4])));
    assert_eq!(row[0]["outputs"][0]["shape"], serde_json::json!([1, 10]));
    // (Within the tolerance: tract runs one row on a plan made for batch 1, with other kernels.)
    for (one, batched) in f64s(&row[0]["outputs"][0]["data"]).iter().zip(&f64s(&output["data"])[..10]) {
        assert!((one - batched).abs() <= TOLERANCE * (1.0 + batched.abs()), "{one} vs {batched}");
    }

    // --out: one .npy per output that parses back to the printed values; nothing else left.
    let out_dir = dir.path().join("out");
    let run = rtserve(&["--engine", "tract", "--model", s(&mlp), "--out", s(&out_dir), s(&input)], None);
    assert!(lines(&run).is_empty(), "--out prints no tensors");
    let files: Vec<String> = std::fs::read_dir(&out_dir)
        .expect("out folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, ["output.npy"]);
    let npy = parse_npy(&std::fs::read(out_dir.join("output.npy")).expect("read")).expect("parses");
    assert_eq!(npy.shape, shape(&output["shape"]));
    // JSON carries the shortest text that reads back as the same f32: compare as f32, exactly.
    let Values::Float(written) = &npy.values else { panic!("FP32 is read as floats: {npy:?}") };
    let as_f32 = |values: &[f64]| values.iter().map(|v| *v as f32).collect::<Vec<f32>>();
    assert_eq!(as_f32(written), as_f32(&f64s(&output["data"])));
    // Several inputs: one folder each, named after the input file.
    let second = dir.path().join("y.npy");
    std::fs::copy(&input, &second).expect("copy");
    let several = dir.path().join("several");
    let args = ["--engine", "tract", "--model", s(&mlp), "--out", s(&several), s(&input), s(&second)];
    assert!(rtserve(&args, None).status.success());
    for stem in ["x", "y"] {
        let bytes = std::fs::read(several.join(stem).join("output.npy")).expect("one file per input");
        assert_eq!(parse_npy(&bytes).expect("parses").values, npy.values);
    }

    // --repeat: the percentiles and the peak RSS on stderr, the outputs as usual.
    let run = rtserve(&["--engine", "tract", "--model", s(&mlp), "--repeat", "5", s(&input)], None);
    assert_eq!(lines(&run).len(), 1);
    let err = stderr(&run);
    assert!(
        err.contains("engine time (tract, 5 runs): p50 ")
            && err.contains(" ms, p99 ")
            && err.contains(" runs/s"),
        "{err}"
    );
    assert!(err.contains("peak RSS (VmHWM): ") && err.contains(" MiB"), "{err}");
}

/// The `pixels` model with a `[preprocess]` table that keeps pixel values as they are.
fn pixels_model(repository: &Path) -> PathBuf {
    write_pixels_model(
        repository,
        "pixels",
        "config.toml",
        "max_batch_size = 4\n[preprocess]\nfilter = \"area\"\n",
    )
}

/// A black 8×8 PNG with one pixel at `(x, y)` of the given red value.
fn one_red_pixel(path: &Path, x: u32, y: u32, red: u8) {
    let mut image = RgbImage::new(SIDE as u32, SIDE as u32);
    image.put_pixel(x, y, Rgb([red, 0, 0]));
    let mut bytes = Cursor::new(Vec::new());
    image.write_to(&mut bytes, ImageFormat::Png).expect("encode");
    std::fs::write(path, bytes.into_inner()).expect("write png");
}

#[test]
fn images_through_preprocessing_to_top_k_labels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = pixels_model(dir.path());
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).expect("images folder");
    // The red plane comes first (NCHW): pixel (x, y) is class y * 8 + x.
    one_red_pixel(&images.join("a.png"), 3, 2, 255);
    one_red_pixel(&images.join("b.png"), 0, 5, 200);
    std::fs::write(images.join("notes.txt"), "not an image").expect("write");

    let out =
        rtserve(&["--engine", "tract", "--model", s(&model), "--top-k", "2", s(&images.join("a.png"))], None);
    let top = lines(&out);
    assert_eq!(top[0]["output"], "pixels");
    assert_eq!(
        top[0]["classes"],
        serde_json::json!([[
            { "index": 19, "score": 255.0, "label": "class19" },
            { "index": 0, "score": 0.0, "label": "class0" }
        ]])
    );

    // A folder: each image on its own, in name order; --labels from another file.
    let labels = dir.path().join("names.txt");
    std::fs::write(&labels, (0..192).map(|i| format!("name{i}\n")).collect::<String>()).expect("labels");
    let args =
        ["--engine", "tract", "--model", s(&model), "--top-k", "1", "--labels", s(&labels), s(&images)];
    let top = lines(&rtserve(&args, None));
    assert_eq!(top.len(), 2, "{top:?}");
    assert_eq!(top[0]["input"], s(&images.join("a.png")));
    assert_eq!(top[0]["classes"][0][0]["label"], "name19");
    assert_eq!(top[1]["classes"][0][0]["index"], 40);
    assert_eq!(top[1]["classes"][0][0]["score"], 200.0);

    // The tensors themselves: the preprocessed image, batch of one.
    let tensors =
        lines(&rtserve(&["--engine", "tract", "--model", s(&model), s(&images.join("b.png"))], None));
    let pixels = &tensors[0]["outputs"][0];
    assert_eq!(pixels["shape"], serde_json::json!([1, 3, SIDE, SIDE]));
    let values = f64s(&pixels["data"]);
    assert_eq!(values[40], 200.0);
    assert_eq!(values.iter().filter(|v| **v != 0.0).count(), 1);

    // A broken image is a bad input.
    let broken = dir.path().join("broken.png");
    std::fs::write(&broken, b"\x89PNG\r\n\x1a\n not really").expect("write");
    let err = fails(&rtserve(&["--engine", "tract", "--model", s(&model), s(&broken)], None), 2);
    assert!(err.contains("broken.png"), "{err}");
}

#[test]
fn bad_inputs_and_bad_model_files_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mlp = example("mlp");
    let path = |name: &str| dir.path().join(name);
    let f32_npy = |shape: &[usize]| {
        let n: usize = shape.iter().product();
        write_npy(DataType::Fp32, shape, &vec![0u8; n * 4]).expect("npy")
    };
    let good = path("good.npy");
    std::fs::write(&good, f32_npy(&[1, 784])).expect("write");
    let run = |args: &[&str]| {
        let mut all = vec!["--engine", "tract"];
        all.extend(args);
        rtserve(&all, None)
    };

    let notes = path("notes.txt");
    std::fs::write(&notes, "hello").expect("write");
    let err = fails(&run(&["--model", s(&mlp), s(&notes)]), 2);
    assert!(err.contains("notes.txt: unknown input type"), "{err}");

    let err = fails(&run(&["--model", s(&mlp), s(&path("missing.npy"))]), 2);
    assert!(err.contains("missing.npy: no such file"), "{err}");

    let wrong_shape = path("wrong_shape.npy");
    std::fs::write(&wrong_shape, f32_npy(&[2, 5])).expect("write");
    let err = fails(&run(&["--model", s(&mlp), s(&wrong_shape)]), 2);
    assert!(err.contains("input 'input' has shape [2, 5] but the model expects [any, 784]"), "{err}");

    let wrong_dtype = path("wrong_dtype.npy");
    std::fs::write(&wrong_dtype, write_npy(DataType::Fp64, &[1, 784], &[0u8; 784 * 8]).expect("npy"))
        .expect("write");
    let err = fails(&run(&["--model", s(&mlp), s(&wrong_dtype)]), 2);
    assert!(err.contains("input 'input' has datatype FP64 but the model expects FP32"), "{err}");

    let truncated = path("truncated.npy");
    std::fs::write(&truncated, &f32_npy(&[1, 784])[..200]).expect("write");
    let err = fails(&run(&["--model", s(&mlp), s(&truncated)]), 2);
    assert!(err.contains("truncated.npy: the data holds"), "{err}");

    // two_io without 'b'; and a .npy for a model with two inputs.
    let only_a = path("only_a.npz");
    write_npz(&only_a, &[("a", write_npy(DataType::Fp32, &[1, 4], &[0u8; 16]).expect("npy"))]);
    let err = fails(&run(&["--model", s(&example("two_io")), s(&only_a)]), 2);
    assert!(err.contains("missing input 'b' (FP32 [any, 4]) for model 'two_io'"), "{err}");
    let err = fails(&run(&["--model", s(&example("two_io")), s(&good)]), 2);
    assert!(err.contains("a .npy file feeds a model with one input; model 'two_io' has 2 (a, b)"), "{err}");

    // stdin: the byte count must fit the shape; --shape is needed.
    let out = rtserve(&["--engine", "tract", "--model", s(&mlp), "--shape", "1,784", "-"], Some(&[0u8; 100]));
    let err = fails(&out, 2);
    assert!(
        err.contains("-: shape [1, 784] holds 784 elements of FP32 (3136 bytes) but the data has 100"),
        "{err}"
    );
    let err = fails(&run(&["--model", s(&mlp), "-"]), 2);
    assert!(err.contains("needs --shape"), "{err}");

    // An image for a model without preprocessing.
    let png = path("a.png");
    one_red_pixel(&png, 0, 0, 1);
    let err = fails(&run(&["--model", s(&mlp), s(&png)]), 2);
    assert!(err.contains("model 'mlp' declares no preprocessing"), "{err}");

    // --out with one good and one bad input: nothing written.
    let out_dir = path("out");
    let err = fails(&run(&["--model", s(&mlp), "--out", s(&out_dir), s(&good), s(&wrong_shape)]), 2);
    assert!(err.contains("wrong_shape.npy: input 'input' has shape"), "{err}");
    assert!(!out_dir.exists() || std::fs::read_dir(&out_dir).expect("dir").next().is_none());

    // A config that does not fit the graph is bad input too: exit code 2. The same
    // config fitted to the graph, given by path for a model file outside any repository, runs.
    let loose = path("loose.onnx");
    std::fs::copy(&mlp, &loose).expect("copy model");
    let config = path("mine.pbtxt");
    let mlp_config = std::fs::read_to_string(root().join("examples/model_repository/mlp/config.pbtxt"))
        .expect("mlp config");
    std::fs::write(&config, mlp_config.replace("dims: [ 784 ]", "dims: [ 100 ]")).expect("write");
    let err = fails(&run(&["--model", s(&loose), "--config", s(&config), s(&good)]), 2);
    assert!(err.contains("config input 'input' has shape [-1, 100] (batch included)"), "{err}");
    std::fs::write(&config, &mlp_config).expect("write");
    assert!(run(&["--model", s(&loose), "--config", s(&config), s(&good)]).status.success());

    // The model file itself: not ONNX, of no type run reads, missing: exit code 2.
    let garbage = path("garbage.onnx");
    std::fs::write(&garbage, b"\xff\xff\xff\xff not protobuf").expect("write");
    let err = fails(&run(&["--model", s(&garbage), s(&good)]), 2);
    assert!(err.contains("garbage.onnx"), "{err}");
    let unknown = path("model.bin");
    std::fs::write(&unknown, b"\xff\xff\xff\xff not protobuf").expect("write");
    let err = fails(&run(&["--model", s(&unknown), s(&good)]), 2);
    assert!(
        err.contains("model.bin") && err.contains("reads ONNX (.onnx) and TFLite (.tflite) model files"),
        "{err}"
    );
    let err = fails(&run(&["--model", s(&path("nowhere.onnx")), s(&good)]), 2);
    assert!(err.contains("nowhere.onnx: no such model file"), "{err}");
}

#[test]
fn help_explains_each_flag() {
    let out = rtserve(&["--help"], None);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--model",
        "--config",
        "--shape",
        "--datatype",
        "--top-k",
        "--softmax",
        "--labels",
        "--out",
        "--repeat",
        "--threads",
        "--engine",
        "--ort-library",
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}: {help}");
    }
}

/// TFLite files (`examples/edge`, converted by TensorFlow) match Google's interpreter (LiteRT)
/// on the same input on every engine: the float CNN and its full INT8 conversion (int8 tensors
/// in and out), the INT8 file with a run-time batch on eight examples at once (on tract, also
/// under `--engine onnxruntime`: it does not convert to ONNX), and a small mobile classifier,
/// float and INT8, that tract cannot read (a depth multiplier of 2) and ONNX Runtime runs. A
/// file neither engine can read (an operator both lack) and a truncated flatbuffer are bad
/// input (exit 2), naming the cause.
#[test]
fn tflite_models_match_litert() {
    let dir = tempfile::tempdir().expect("tempdir");
    let edge = root().join("examples/edge");
    let mut input = PathBuf::new();
    let files = [
        ("fashion_cnn_float", &["auto", "onnxruntime", "tract"][..]),
        ("fashion_cnn_int8", &["auto", "onnxruntime", "tract"]),
        ("fashion_cnn_int8_dynamic_batch", &["auto", "onnxruntime", "tract"]),
        ("mobile_block_float", &["onnxruntime"]),
        ("mobile_block_int8", &["onnxruntime"]),
    ];
    for (stem, engines) in files {
        let reference: Value = serde_json::from_str(
            &std::fs::read_to_string(edge.join(format!("refs/{stem}.expected.json"))).expect("reference"),
        )
        .expect("reference JSON");
        input = dir.path().join(format!("{stem}.npy"));
        std::fs::write(&input, npy_of(&reference["inputs"][0])).expect("write npy");
        let model = edge.join(format!("{stem}.tflite"));
        for &engine in engines {
            let out = rtserve(&["--engine", engine, "--model", s(&model), s(&input)], None);
            if !engine_present(&out) {
                continue;
            }
            assert_matches(
                &lines(&out)[0]["outputs"],
                &reference["outputs"],
                &format!("{stem}, --engine {engine}"),
            );
        }
    }
    // Where no temporary file can be written for ONNX Runtime, the rewritten model stays in
    // memory and answers the same (`input` is mobile_block_int8's, the last file above).
    let model = edge.join("mobile_block_int8.tflite");
    let out = Command::new(env!("CARGO_BIN_EXE_rtserve"))
        .args(["run", "--engine", "onnxruntime", "--model", s(&model), s(&input)])
        .env_remove("RTSERVE_ENGINE")
        .env("RUST_LOG", "rtserve_engines=debug")
        .env("TMPDIR", dir.path().join("missing"))
        .output()
        .expect("rtserve run");
    if engine_present(&out) {
        assert!(stderr(&out).contains("stays in memory"), "{}", stderr(&out));
        let reference: Value = serde_json::from_str(
            &std::fs::read_to_string(edge.join("refs/mobile_block_int8.expected.json")).expect("reference"),
        )
        .expect("reference JSON");
        assert_matches(&lines(&out)[0]["outputs"], &reference["outputs"], "in memory");
    }
    let err = fails(&rtserve(&["--engine", "tract", "--model", s(&model), s(&input)], None), 2);
    assert!(err.contains("mobile_block_int8.tflite") && err.contains("convolution"), "{err}");

    let unreadable = edge.join("cumsum.tflite");
    let err = fails(&rtserve(&["--model", s(&unreadable), s(&input)], None), 2);
    assert!(err.contains("cumsum.tflite") && err.contains("CUMSUM"), "{err}");
    let model = edge.join("fashion_cnn_float.tflite");
    let bytes = std::fs::read(&model).expect("read model");
    let truncated = dir.path().join("truncated.tflite");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    let err = fails(&rtserve(&["--model", s(&truncated), s(&input)], None), 2);
    assert!(err.contains("truncated.tflite"), "{err}");
}

/// `RUST_LOG` filters by target: a level, `target=level` pairs, or both; a value it cannot read
/// is named on stderr and the default (warnings only, for `run`) applies.
#[test]
fn rust_log_filters_by_target() {
    let mlp = example("mlp");
    let raw = vec![0u8; 784 * 4];
    let args = ["--engine", "tract", "--model", s(&mlp), "--shape", "1,784", "-"];
    let choice = "rtserve_engines::choice: default engine: tract";
    for (rust_log, logged) in [
        ("warn", false),
        ("warn,rtserve_engines=info", true),
        ("warn,rtserve_server=info", false),
        ("info", true),
        ("rtserve_engines=loudest", false),
    ] {
        let run = rtserve_logging(&args, Some(&raw), rust_log);
        assert_eq!(lines(&run).len(), 1, "RUST_LOG={rust_log}");
        assert_eq!(stderr(&run).contains(choice), logged, "RUST_LOG={rust_log}: {}", stderr(&run));
    }
    let run = rtserve_logging(&args, Some(&raw), "rtserve_engines=loudest");
    assert!(
        stderr(&run).contains("warning: RUST_LOG=\"rtserve_engines=loudest\" ignored"),
        "{}",
        stderr(&run)
    );
}
