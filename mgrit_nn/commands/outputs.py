"""What every command writes and prints: the output paragraph of its ``--help`` (the tests
check that it names every key of the command's JSON)."""

from __future__ import annotations

_OUTPUTS = {
    "check": """\
Runs the MGRIT forward solve, the adjoint solve and the gradient on all ranks and checks them
against the serial network (autograd on rank 0), in float64 whatever the config's
runtime.dtype (--set runtime.dtype=float32 checks float32).
Prints (rank 0, stderr) a verdict: per solve its iterations and final residual against its
tolerance (mgrit.tol / adjoint.tol, raised to the dtype's rounding floor 10 eps |C-point
states| where that is larger), the state and gradient relative errors against sqrt(eps), and
PASS or FAIL. Then, as the last line of rank 0's stdout, one JSON object: fwd_iters,
fwd_residuals, fwd_conv_factor, state_rel_err, adj_iters, adj_residuals, adj_conv_factor,
grad_rel_err, grad_max_rel_err, loss_serial, loss_mgrit, the times (serial_gradient_s,
mgrit_forward_s, mgrit_adjoint_s), the settings (ranks, layers, levels, cfactor, relax, cycle,
dtype, device, batch), the tolerances used (fwd_tol, adj_tol, err_tol) and the outcome
(fwd_converged, adj_converged, state_ok, grad_ok, passed). Exit status 1 when a check fails.""",
    "train": """\
Writes OUT/history.h5 (one row per step, flushed every step), OUT/checkpoints/step_*.h5,
OUT/config.yaml and OUT/result.json; shows a progress bar on rank 0's stderr (not with
--quiet). Prints, as the last line of rank 0's stdout, the JSON object of result.json:
method, optimizer, ranks, layer_ranks, data_replicas, layers, dtype, steps, epochs,
stopped_by_signal, loss (of the last step), train_loss, train_accuracy, val_loss,
val_accuracy (after training), fwd_iters_per_step, adj_iters_per_step, wall_time_s, out,
and the method's own keys (oneshot/mgrit: warm_store_bytes; local_critic: the accuracy of
every sub-model). Exit status 75 when stopped by SIGTERM/SIGUSR1/Ctrl-C after writing a
checkpoint (resume with --resume latest).""",
    "bench": """\
Times one gradient of serial autograd (rank 0), of one-shot MGRIT (train.fwd_iters +
train.adj_iters iterations) and, with bench.exact, of exact MGRIT (to mgrit.tol): medians of
bench.repeats after bench.warmup. Prints, as the last line of rank 0's stdout, one JSON
object: serial_grad_s (eager autograd), with bench.compile_serial serial_compiled_grad_s,
serial_compile_s (torch.compile of the whole network) and serial_compiled_grad_diff (largest
difference of its parameter gradients from eager's), on the CPU with tanh
serial_sigmoid_grad_s (eager autograd with tanh as 2 sigmoid(2z) - 1, the formulation the
layer-parallel steps use there), with runtime.graphs (cuda or emulate) serial_graphed_grad_s
(the whole serial gradient recorded once and replayed) and serial_graphed_grad_diff,
serial_best_grad_s (the fastest),
oneshot_grad_s, ratio_oneshot (one-shot / best serial), ratio_oneshot_eager (one-shot / eager),
oneshot_work_sweeps (oneshot_fwd_sweeps + oneshot_adj_sweeps: step applications / N),
span_speedup_oneshot (the critical-path model), pingpong (on 2 or more ranks: bytes,
one_way_s, latency_s, bandwidth_Bps between ranks 0 and 1; null on one rank); with
bench.pipeline on 2 or more ranks the pipeline-parallel baseline: pipeline (schedule,
microbatches, seconds per run), pipeline_gpipe_s, pipeline_gpipe_microbatches,
pipeline_1f1b_s, pipeline_1f1b_microbatches (the best of each schedule), pipeline_bounds
(the stages' layer ranges) and pipeline_grad_diff (largest difference of its gradient from
serial autograd's); the tensor
operations that run a kernel per gradient: serial_kernels,
oneshot_kernels (the busiest rank's), oneshot_kernels_total (all ranks'; with runtime.graphs
cuda those dispatched outside the replays), oneshot_iterations (forward + adjoint) and
oneshot_replays (of those, replayed from a recording: runtime.graphs), oneshot_launches
(the busiest rank's oneshot_kernels plus its replays: what it issues when a replay is one
launch); the memory of the
first one-shot gradient: oneshot_peak_mb (the most tensor bytes a rank held at once) and
oneshot_state_sets (that, in the rank's level-0 state sets); with bench.exact
also mgrit_grad_s, ratio_mgrit, mgrit_fwd_iters, mgrit_adj_iters, mgrit_fwd_factor,
mgrit_adj_factor, mgrit_work_sweeps, mgrit_kernels, mgrit_peak_mb, mgrit_state_sets,
span_speedup_mgrit; paired (null without bench.pairs; else rounds, serial_s, oneshot_s,
oneshot_one_rank_s, the medians of the gradients timed alternately round by round, and per
round ratio_oneshot = one-shot / serial and on 2 or more ranks efficiency = one-rank one-shot
/ (ranks x one-shot), each as [first quartile, median, third quartile], and
one_rank_grad_diff, the largest difference of the one-rank gradient from the group's);
the settings (ranks, layers, batch, width, kind, relax, cfactor, cycle, levels, dtype,
device, repeats, warmup), per_rank (rank, rss_mb, gpu_mb and the seconds per phase of the
solves, oneshot_phases_s and mgrit_phases_s) and machine (platform, cpus, torch, threads,
mpi, python).""",
    "model": """\
Without --machine (under mpiexec with 2 or more ranks): calibrates on this machine, then
checks itself: rank 0 times serial autograd and the one-shot gradient on one rank, fits the
cost of a tensor operation (kernel_s) and of an element it writes (element_s) to the
one-shot gradient's compute segments, takes latency_s and bandwidth_Bps from a ping-pong of
ranks 0 and 1, and all ranks time the one-shot gradient on the whole group. For every rank
count of --ranks it records the one-shot (with --exact also the exact MGRIT) gradient's
schedule on that many virtual ranks (threads running the solver's own code) and replays it
on the machine. Prints, as the last line of rank 0's stdout, one JSON object: layers, batch,
dtype, machine (the four numbers), serial_predicted_s, serial_kernels, predicted (per rank
count: ranks, oneshot_s, oneshot_speedup, oneshot_kernels of the busiest rank, oneshot_busy_s;
with --exact the same with mgrit_), crossover_ranks (the smallest rank count predicted faster
than serial, or null), and when calibrated validation (serial, oneshot_1, oneshot_P: each
measured_s, predicted_s, error) and pingpong.""",
    "init": "Writes OUT/checkpoints/step_00000000.h5 and prints, as the last line of rank 0's "
            "stdout, one JSON object: {\"checkpoint\": its path}.",
    "info": """\
Prints a readable summary to stdout. A history: when it started, ranks, version, the model
and method, the steps recorded (of a running job's history too), the last step's loss,
accuracy, gradient norm and MGRIT iterations, the best validation accuracy, and the compute,
comm and wait seconds per rank. A checkpoint: whether it is complete (checksum), step,
epoch, learning rate, model and optimizer state. Exit status 2 for any other file.""",
    "schema": "Prints the Markdown reference of every config key, its type, default and "
              "meaning (docs/config.md is this output).",
    "scaling": """\
Writes the study folder (--out): study.json (what was asked, the threads per rank, the status
of every run) and per rank count ranks_PPPP/scaling_config.yaml and job.sbatch; once run,
also bench.json, history.h5, result.json, checkpoints/ and run.log (--local) or the SLURM log.
Prints progress on stderr and, as the last line of stdout, one JSON object: study, kind,
ranks and failed (--local) or jobs (--submit). Exit status 1 when a run failed.""",
    "report": """\
Writes into the folder (or --out) report.md (tables: threads per rank, gradient times of
mgrit-nn bench, training step times, speed-up, efficiency, span model; or, for a folder of
runs, one row per run) and PNG plots (runtime.png, speedup.png, efficiency.png,
training.png, residuals.png, mgrit_convergence.png, timing.png, violation.png,
method_columns.png: those the data allow). Prints one JSON object: {"written": [files]}.""",
    "plot": """\
Writes PNG plots next to the history (or into --out): training.png (loss and accuracy),
residuals.png, mgrit_convergence.png, timing.png (seconds per rank), violation.png and
method_columns.png (those the data allow). Prints one JSON object: {"written": [files]}.""",
}


def of(command: str) -> str:
    """What ``mgrit-nn COMMAND --help`` says the command writes and prints."""
    if command != "job":
        return _OUTPUTS[command]
    import textwrap

    from mgrit_nn.commands.job import DEFAULTS  # re and pathlib only: quick

    settings = ", ".join(f"{k}={v!r}" for k, v in DEFAULTS.items())
    return textwrap.fill(
        "Prints a SLURM job script to stdout: the template (cpu, gpu, array or a file of your "
        "own) with its {{NAME}} settings filled in from --var NAME=VALUE and the defaults. "
        f"The settings and their defaults: {settings}. A #SBATCH line whose setting is empty "
        "is left out; NTASKS empty means NODES x NTASKS_PER_NODE.", 92)
