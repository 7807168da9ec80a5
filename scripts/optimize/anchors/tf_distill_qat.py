#!/usr/bin/env python3
"""The seed's distillation and QAT recipes in TensorFlow on `fashion_cnn`: the anchor for `rtserve optimize distill | qat`.

Runs in the anchors venv (see README.md), never in CI. The same teacher, student, data, epochs and
settings as scripts/optimize/distill_qat.sh:

  1. teacher: the zoo's examples/optimize/fashion_cnn.onnx in tf-keras (fashion_cnn_keras.py), its
     forward pass checked against the ONNX model (onnx.reference) on 16 test images; its logits on
     the training images (inference mode) are computed once, as rtserve does;
  2. student: the ONNX file given by --student, the one `rtserve optimize distill --student-width 0.3`
     starts from, written by `rtserve optimize prune --method channels --sparsity 0.7 --epochs 0`
     (the teacher's channels with the largest L2 norms; 10 and 20 where the teacher has 32 and 64),
     rebuilt in tf-keras with its widths and weights (checked against onnx.reference too); or the
     hand-written student examples/optimize/fashion_student_init.onnx (scripts/optimize/fashion_student.sh
     gives its recipe: --epochs 10 --temperature 2 --alpha 0.7 --skip-qat);
  3. three students trained --epochs from those same weights with Keras' SGD (momentum, CosineDecay
     to 0 over all steps), L2 weight decay on every trainable variable as rtserve's SGD applies it,
     the best epoch by held-out accuracy kept:
       distilled:   alpha·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1-alpha)·CE(labels, s)  (T 3, alpha 0.7);
       unlabelled:  alpha 1 (no labels; the best epoch by agreement with the teacher on held-out);
       labels_only: CE(labels, s);
  4. QAT: tfmot.quantization.keras.quantize_model on the teacher (TF-MOT's default 8-bit scheme),
     --qat-epochs at --qat-lr on the labels, then test accuracy of the fake-quantized Keras model and
     of its TFLite INT8 conversion (tf.lite, Optimize.DEFAULT), beside post-training INT8 of the FP32
     teacher (TFLite, --calibration-limit training images as the representative dataset) and FP32;
  5. prints one JSON line with every figure and setting (and writes it to --out when given).

  python scripts/optimize/anchors/tf_distill_qat.py DIR --student STUDENT.onnx [--epochs 2]
      [--qat-epochs 1] [--temperature 3] [--alpha 0.7] [--lr 0.05] [--qat-lr 0.001] [--limit N]
"""
import argparse
import contextlib
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tfmot needs tf-keras (Keras 2), not Keras 3
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from fashion_cnn_keras import (  # noqa: E402
    PATCHES, STUDENTS, ZOO_MODEL, accuracy, conv_widths, keras_from_onnx, load_split, onnx_parity, onnx_weights,
    student_alphas)


def log(message):
    print(message, file=sys.stderr, flush=True)


def distillation_loss(tf, temperature, alpha):
    """The seed's loss, per sample. y_true packs [label, teacher logits...]; y_pred is the student's logits."""

    def loss(y_true, y_pred):
        labels = tf.cast(y_true[:, 0], tf.int32)
        log_p = tf.nn.log_softmax(y_true[:, 1:] / temperature)
        log_q = tf.nn.log_softmax(y_pred / temperature)
        kl = tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=1)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=y_pred)
        return alpha * temperature * temperature * kl + (1.0 - alpha) * ce

    return loss


def add_weight_decay(tf, model, weight_decay):
    """rtserve's SGD weight decay (g + wd·w, before momentum) as the loss term wd/2·Σw² over the trainable variables."""
    variables = list(model.trainable_variables)
    if weight_decay > 0:
        model.add_loss(lambda: 0.5 * weight_decay * tf.add_n([tf.reduce_sum(tf.square(v)) for v in variables]))
    return len(variables)


def best_heldout_callback(keras, x, y):
    """Keeps the weights of the epoch with the best held-out accuracy (the first on a tie, as rtserve)."""

    class BestHeldout(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs, self.best = [], None

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            score = accuracy(self.model, x, y)
            self.epochs.append({"epoch": epoch, "train_loss": round(float(logs["loss"]), 4),
                                "heldout_score": round(score, 4), "seconds": round(time.perf_counter() - self.start, 1)})
            log(f"  epoch {epoch}: held-out {score:.4f}")
            if self.best is None or score > self.best[0]:
                self.best = (score, epoch, self.model.get_weights())

        def on_train_end(self, logs=None):
            self.model.set_weights(self.best[2])

    return BestHeldout()


def torch_form_sgd(keras, tf):
    """Keras' SGD with PyTorch's (and rtserve's) form of momentum: v = m·v + g; w −= lr·v, where Keras keeps
    the rate inside the velocity (v = m·v − lr·g; w += v). The two differ only while the rate changes."""

    class TorchFormSGD(keras.optimizers.SGD):
        def update_step(self, gradient, variable):
            lr = tf.cast(self.learning_rate, variable.dtype)
            v = self.momentums[self._index_dict[self._var_key(variable)]]
            v.assign(v * tf.cast(self.momentum, variable.dtype) + gradient)
            variable.assign_sub(lr * v)

    return TorchFormSGD


def fit(keras, tf, model, x, y_fit, heldout, args, lr, epochs, loss):
    """Keras SGD (momentum, CosineDecay to 0 over all steps, or --schedule constant) + weight decay; returns the
    best-epoch report."""
    steps = -(-len(x) // args.batch_size) * epochs
    schedule = keras.optimizers.schedules.CosineDecay(lr, steps) if args.schedule == "cosine" else lr
    decayed = add_weight_decay(tf, model, args.weight_decay)
    optimizer = (torch_form_sgd(keras, tf) if args.momentum_form == "torch" else keras.optimizers.SGD)(
        schedule, momentum=args.momentum)
    model.compile(optimizer=optimizer, loss=loss)
    best = best_heldout_callback(keras, *heldout)
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # Keras progress on stderr: stdout is the JSON line only
        model.fit(x, y_fit, batch_size=args.batch_size, epochs=epochs, shuffle=not args.no_shuffle, callbacks=[best],
                  verbose=args.verbose)
    return {"epochs": best.epochs, "best_epoch": best.best[1], "fit_s": round(time.perf_counter() - start, 1),
            "weight_decay_vars": decayed}


def train_student(keras, tf, name, alpha, data, teacher_out, args):
    """One student from the --student weights: alpha 0.7 distilled, 1 unlabelled, 0 labels alone."""
    (x, y), (xh, yh), (xt, yt) = data
    t_train, t_heldout = teacher_out
    unlabelled = alpha >= 1.0
    train_labels = np.argmax(t_train, 1) if unlabelled else y
    choose_on = np.argmax(t_heldout, 1) if unlabelled else yh
    keras.utils.set_random_seed(args.seed)  # every student sees the same shuffles
    student = keras_from_onnx(keras, args.student, name=f"student_{name}")
    log(f"{name}: alpha {alpha}, T {args.temperature}")
    y_fit = np.concatenate([train_labels[:, None].astype(np.float32), t_train], axis=1)
    report = fit(keras, tf, student, x, y_fit, (xh, choose_on), args, args.lr, args.epochs,
                 distillation_loss(tf, args.temperature, alpha))
    if args.save_students:
        np.savez(os.path.join(args.save_students, f"{name}.npz"), **onnx_weights(student))
    report.update({"alpha": alpha, "heldout_acc": round(accuracy(student, xh, yh), 4),
                   "test_acc": round(accuracy(student, xt, yt), 4)})
    if unlabelled:
        report["heldout_agreement_with_teacher"] = round(accuracy(student, xh, choose_on), 4)
    return report


def tflite_logits(tf, content, x, threads):
    """Logits of a TFLite model (float input and output) on x, batches of 500."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # older TensorFlow: its own interpreter
        Interpreter = tf.lite.Interpreter
    interpreter = Interpreter(model_content=content, num_threads=threads)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    rows = []
    for i in range(0, len(x), 500):
        batch = x[i:i + 500]
        interpreter.resize_tensor_input(inp["index"], batch.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], batch)
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out["index"]).copy())
    int8_convs = None
    with contextlib.suppress(Exception):  # a private helper: only for the report
        ops = interpreter._get_ops_details()
        tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
        convs = [op for op in ops if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED")]
        int8_convs = f"{sum(tensors[op['inputs'][0]]['dtype'] == np.int8 for op in convs)}/{len(convs)}"
    return np.concatenate(rows), int8_convs


def tflite_int8(tf, model, representative=None):
    """tf.lite conversion with Optimize.DEFAULT (INT8 weights and activations; float input and output)."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if representative is not None:
        converter.representative_dataset = lambda: ([representative[i:i + 1]] for i in range(len(representative)))
    with contextlib.redirect_stdout(sys.stderr):
        return converter.convert()


def tflite_report(tf, name, content, xt, yt, fp32_pred, threads):
    """Test accuracy and top-1 agreement with FP32 of a TFLite model."""
    logits, int8_convs = tflite_logits(tf, content, xt, threads)
    pred = np.argmax(logits, 1)
    log(f"{name}: test {np.mean(pred == yt):.4f}")
    return {"test_acc": round(float(np.mean(pred == yt)), 4),
            "agreement_with_fp32": round(float(np.mean(pred == fp32_pred)), 4),
            "int8_conv_fc": int8_convs, "bytes": len(content)}


def stamp(tf, keras, tfmot, started):
    """The start time and the versions every anchor's JSON line carries."""
    return {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "versions": {"tensorflow": tf.__version__, "tf_keras": keras.__version__,
                         "tfmot": getattr(tfmot, "__version__", "?"), "python": platform.python_version()}}


def emit(result, out):
    """Prints an anchor's result as one JSON line on stdout, and writes it to `out` when given."""
    line = json.dumps(result)
    print(line)
    if out:
        with open(out, "w") as f:
            f.write(line + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("dir", help="directory written by `fashion_cnn.py export` (train/heldout/test .npz + _labels.npy)")
    parser.add_argument("--teacher", default=ZOO_MODEL, help="the teacher and the model to quantize (default the zoo's fashion_cnn.onnx)")
    parser.add_argument("--student", required=True,
                        help="the untrained student: `rtserve optimize prune --method channels --sparsity 0.7 --epochs 0` of "
                             "the teacher, or examples/optimize/fashion_student_init.onnx")
    parser.add_argument("--epochs", type=int, default=2, help="student epochs (default 2)")
    parser.add_argument("--temperature", type=float, default=3.0, help="T (default 3)")
    parser.add_argument("--alpha", type=float, default=0.7, help="weight of the soft term (default 0.7)")
    parser.add_argument("--lr", type=float, default=0.05, help="student learning rate (default 0.05)")
    parser.add_argument("--qat-epochs", type=int, default=1, help="QAT epochs (default 1)")
    parser.add_argument("--qat-lr", type=float, default=0.001, help="QAT learning rate (default 0.001)")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    parser.add_argument("--momentum-form", choices=["keras", "torch"], default="keras",
                        help="keras: Keras' SGD as it is (the default); torch: the rate outside the velocity, "
                             "as PyTorch and rtserve (a diagnostic)")
    parser.add_argument("--no-shuffle", action="store_true",
                        help="train on the images in their order (a diagnostic: compare step by step with rtserve)")
    parser.add_argument("--students", default=",".join(STUDENTS),
                        help="which students to train, comma-separated (default all three; \"\": none, QAT only)")
    parser.add_argument("--float64", action="store_true",
                        help="build and train every model in float64 (a diagnostic of float32 round-off)")
    parser.add_argument("--save-students", metavar="DIR", default=None,
                        help="write each trained student's weights to DIR/<student>.npz under their ONNX names and "
                             "layouts (fashion_cnn-shaped students; for replay_f64.py)")
    parser.add_argument("--schedule", choices=["cosine", "constant"], default="cosine",
                        help="learning-rate schedule, as rtserve's --schedule (default cosine)")
    parser.add_argument("--weight-decay", type=float, default=5e-4,
                        help="L2 weight decay, added to the gradient before momentum as rtserve's SGD (default 5e-4, rtserve's)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--calibration-limit", type=int, default=512,
                        help="training images for post-training INT8's representative dataset (default 512, as rtserve)")
    parser.add_argument("--seed", type=int, default=0, help="seed for shuffling and Keras (default 0)")
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow intra-op and TFLite threads (default 2)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images of each split (quick check)")
    parser.add_argument("--skip-qat", action="store_true", help="distillation only")
    parser.add_argument("--out", default=None, help="also write the JSON line to this file")
    parser.add_argument("--verbose", type=int, default=2, help="Keras fit verbosity, on stderr (default 2: one line an epoch)")
    args = parser.parse_args()
    args.students = [name for name in args.students.split(",") if name]
    unknown = set(args.students) - set(STUDENTS)
    if unknown:
        parser.error(f"unknown student {', '.join(sorted(unknown))} ({', '.join(STUDENTS)})")
    if args.save_students:
        if PATCHES[0] in conv_widths(args.student):
            parser.error("--save-students writes fashion_cnn-shaped students only, not the hand-written one")
        os.makedirs(args.save_students, exist_ok=True)

    import tensorflow as tf
    import tf_keras as keras
    import tensorflow_model_optimization as tfmot

    if args.float64:
        keras.backend.set_floatx("float64")
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(args.seed)
    started = time.time()

    data = (load_split(args.dir, "train", args.limit), load_split(args.dir, "heldout", args.limit),
            load_split(args.dir, "test", args.limit))
    (x, y), (xh, yh), (xt, yt) = data

    teacher = keras_from_onnx(keras, args.teacher, name="teacher")
    student = keras_from_onnx(keras, args.student, name="student")
    parity = {"teacher": onnx_parity(teacher, args.teacher, xt[:16]),
              "student": onnx_parity(student, args.student, xt[:16])}
    log(f"max |keras - onnx| logits: teacher {parity['teacher']:.2e}, student {parity['student']:.2e}")
    start = time.perf_counter()
    teacher_out = (teacher.predict(x, batch_size=512, verbose=0), teacher.predict(xh, batch_size=512, verbose=0))
    teacher_s = time.perf_counter() - start
    fp32_test = teacher.predict(xt, batch_size=512, verbose=0)
    fp32_pred = np.argmax(fp32_test, 1)
    teacher_acc = {"heldout": round(float(np.mean(np.argmax(teacher_out[1], 1) == yh)), 4),
                   "test": round(float(np.mean(fp32_pred == yt)), 4)}
    log(f"teacher: {teacher_acc}, logits over {len(x)} training images in {teacher_s:.1f} s")

    alphas = student_alphas(args.alpha)
    students = {name: train_student(keras, tf, name, alphas[name], data, teacher_out, args)
                for name in args.students}

    qat = None
    if not args.skip_qat:
        keras.utils.set_random_seed(args.seed)
        q = tfmot.quantization.keras.quantize_model(keras_from_onnx(keras, args.teacher, name="qat"))
        log(f"qat: quantize_model, {args.qat_epochs} epoch(s) at lr {args.qat_lr}")
        qat = fit(keras, tf, q, x, y, (xh, yh), args, args.qat_lr, args.qat_epochs,
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        fake_pred = np.argmax(q.predict(xt, batch_size=512, verbose=0), 1)
        qat.update({"heldout_acc": round(accuracy(q, xh, yh), 4),
                    "fake_quant_test_acc": round(float(np.mean(fake_pred == yt)), 4),
                    "fake_quant_agreement_with_fp32": round(float(np.mean(fake_pred == fp32_pred)), 4)})
        qat["tflite_int8"] = tflite_report(tf, "qat tflite", tflite_int8(tf, q), xt, yt, fp32_pred, args.threads)
        calibration = x[:args.calibration_limit]
        qat["ptq_tflite_int8"] = tflite_report(tf, "ptq tflite", tflite_int8(tf, teacher, calibration), xt, yt,
                                               fp32_pred, args.threads)

    result = {
        "anchor": "tf_distill_qat",
        "teacher_heldout_acc": teacher_acc["heldout"],
        "teacher_test_acc": teacher_acc["test"],
        "teacher_params": int(teacher.count_params()),
        "student_params": int(student.count_params()),
        "student_widths": conv_widths(args.student),
        "students": students,
        "qat": qat,
        "teacher_logits_s": round(teacher_s, 1),
        "wall_s": round(time.time() - started, 1),
        "init_parity_max_abs": parity,
        "settings": {
            "teacher": os.path.basename(args.teacher), "student": os.path.basename(args.student),
            "train_images": len(x), "heldout_images": len(xh), "test_images": len(xt),
            "epochs": args.epochs, "temperature": args.temperature, "alpha": args.alpha, "lr": args.lr,
            "qat_epochs": args.qat_epochs, "qat_lr": args.qat_lr, "optimizer": "sgd", "momentum": args.momentum,
            "momentum_form": args.momentum_form, "shuffle": not args.no_shuffle,
            "float64": args.float64,
            "schedule": args.schedule, "weight_decay": args.weight_decay, "batch_size": args.batch_size,
            "calibration_limit": args.calibration_limit, "seed": args.seed, "threads": args.threads,
        },
        **stamp(tf, keras, tfmot, started),
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
