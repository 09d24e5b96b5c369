// The socflow C++ wrapper (socflow.hpp) end to end: load a model (from a file and
// from memory), compute controls and values (f64 and f32), a batch, closed-loop
// roll-outs (built-in dynamics and C++ callables), samples with log-densities, and
// one deliberately caught error.
//
//   socflow_example MODEL [--threads T] [--steps K]
//
// --threads: worker threads of the roll-outs and the sampler (0: the library's
// shared pool); --steps: the sampler's RK4 steps (default 16).
// Output: one "key value…" line per result, numbers with 17 significant digits so a
// script can compare them with other APIs exactly. Exit status 0 on success, 1 on an
// unexpected socflow::Error, 2 on bad arguments.

#include "socflow.hpp"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace {

void print_values(const char *key, const std::vector<double> &v) {
    std::printf("%s", key);
    for (std::size_t i = 0; i < v.size(); i++) {
        std::printf("%s%.17g", i == 0 ? " " : ",", v[i]);
    }
    std::printf("\n");
}

std::vector<std::uint8_t> read_file(const std::string &path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        throw std::runtime_error("cannot open " + path);
    }
    return std::vector<std::uint8_t>(std::istreambuf_iterator<char>(in),
                                     std::istreambuf_iterator<char>());
}

int run(const std::string &path, std::size_t threads, std::size_t steps) {
    std::printf("socflow %s\n", socflow::version().c_str());

    // A model from a file, and the same model from the file's bytes.
    socflow::Model model = socflow::Model::load(path);
    const socflow::ModelInfo info = model.info();
    std::printf("info state_dim=%zu control_dim=%zu kind=%s t0=%.17g t1=%.17g parameters=%zu\n",
                info.state_dim, info.control_dim, socflow::to_string(info.kind), info.t0, info.t1,
                info.parameter_count);
    {
        const std::vector<std::uint8_t> bytes = read_file(path);
        socflow::Model copy = socflow::Model::from_buffer(bytes);
        const socflow::ModelInfo again = copy.info();
        const bool same = again.state_dim == info.state_dim &&
                          again.control_dim == info.control_dim && again.kind == info.kind &&
                          again.parameter_count == info.parameter_count;
        std::printf("from_buffer same_info=%d\n", same ? 1 : 0);
    }  // `copy` and `bytes` go here; `model` lives on.

    // One state and a time in the middle of the model's interval.
    const std::size_t d = info.state_dim;
    const double t = info.t0 + 0.5 * (info.t1 - info.t0);
    std::vector<double> x(d);
    for (std::size_t i = 0; i < d; i++) {
        x[i] = 0.5 - 0.1 * static_cast<double>(i);
    }
    std::printf("t %.17g\n", t);
    print_values("x", x);

    socflow::Controller ctl(model);
    std::vector<double> u(ctl.control_dim());
    ctl.control(t, x, u);  // into a caller-owned buffer: no allocation
    print_values("control_f64", u);
    std::printf("value_f64 %.17g\n", ctl.value(t, x));

    socflow::Controller ctl32(model, socflow::Precision::f32);
    print_values("control_f32", ctl32.control(t, x));

    // A batch of three states: x, x / 2 and −x.
    std::vector<double> xs;
    for (double scale : {1.0, 0.5, -1.0}) {
        for (double v : x) {
            xs.push_back(scale * v);
        }
    }
    print_values("batch_f64", ctl.control_batch(t, xs));

    // Closed-loop roll-outs, when every state has its control (dz = u dt + σ dW).
    if (ctl.control_dim() == d) {
        socflow::SimulateOptions so;
        so.x0 = x;
        so.t0 = info.t0;
        so.t1 = info.t1;
        so.steps = 50;
        so.sigma = 0.1;
        so.paths = 4;
        so.seed = 7;
        so.threads = threads;
        const socflow::Rollout builtin = ctl.simulate(so);
        print_values("simulate_costs", builtin.costs);
        print_values("simulate_final0",
                     std::vector<double>(builtin.final_states.begin(),
                                         builtin.final_states.begin() + static_cast<long>(d)));

        // The same dynamics written as C++ callables: the same roll-out.
        socflow::Dynamics dyn;
        dyn.state_dim = d;
        dyn.control_dim = d;
        dyn.drift = [d](double, const double *, const double *uu, double *dx) {
            for (std::size_t i = 0; i < d; i++) {
                dx[i] = uu[i];
            }
        };
        dyn.running_cost = [d](double, const double *, const double *uu) {
            double s = 0.0;
            for (std::size_t i = 0; i < d; i++) {
                s += uu[i] * uu[i];
            }
            return 0.5 * s;
        };
        const socflow::Rollout callbacks = ctl.simulate(so, dyn);
        print_values("simulate_callbacks_costs", callbacks.costs);

        // A callable that throws: the roll-out stops and the exception comes back.
        socflow::Dynamics failing = dyn;
        failing.drift = [](double, const double *, const double *, double *) {
            throw std::domain_error("plant model out of range");
        };
        try {
            (void)ctl.simulate(so, failing);
            std::printf("callback_exception none\n");
        } catch (const std::domain_error &e) {
            std::printf("callback_exception %s\n", e.what());
        }
    }

    // Samples 0..5 with log-densities, into caller-owned buffers.
    socflow::SamplerOptions opts;
    opts.solver = socflow::Solver::rk4;
    opts.steps = steps;
    opts.seed = 3;
    opts.log_density = true;
    opts.threads = threads;
    const socflow::Sampler sampler(model, opts);
    const std::size_t n = 5;
    std::vector<double> samples(n * sampler.dim());
    std::vector<double> logp(n);
    sampler.sample_into(0, samples, logp);
    std::printf("samples n=%zu dim=%zu steps=%zu seed=%llu\n", n, sampler.dim(), opts.steps,
                static_cast<unsigned long long>(opts.seed));
    print_values("samples", samples);
    print_values("log_density", logp);

    // A deliberate error: a state of the wrong length. The wrapper throws
    // socflow::Error with the status and the library's message...
    const std::vector<double> short_x(d > 1 ? d - 1 : 2);
    try {
        ctl.control(t, short_x, u);
        std::printf("caught none\n");
    } catch (const socflow::Error &e) {
        std::printf("caught %s: %s\n", e.status_name(), e.message().c_str());
    }
    // ...and try_control returns the status instead of throwing.
    const socflow_status st = ctl.try_control(t, short_x, u);
    std::printf("try_control %s\n", socflow_status_name(st));

    // Moving a handle leaves the source empty; the destructors destroy the rest.
    socflow::Controller moved = std::move(ctl);
    std::printf("moved source_empty=%d target_live=%d\n", ctl ? 0 : 1, moved ? 1 : 0);
    return 0;
}

}  // namespace

int main(int argc, char **argv) {
    std::string path;
    std::size_t threads = 0;
    std::size_t steps = 16;
    for (int i = 1; i < argc; i++) {
        if (std::strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            threads = static_cast<std::size_t>(std::strtoull(argv[++i], nullptr, 10));
        } else if (std::strcmp(argv[i], "--steps") == 0 && i + 1 < argc) {
            steps = static_cast<std::size_t>(std::strtoull(argv[++i], nullptr, 10));
        } else if (path.empty() && argv[i][0] != '-') {
            path = argv[i];
        } else {
            path.clear();
            break;
        }
    }
    if (path.empty()) {
        std::fprintf(stderr, "usage: socflow_example MODEL [--threads T] [--steps K]\n");
        return 2;
    }
    try {
        return run(path, threads, steps);
    } catch (const socflow::Error &e) {
        std::fprintf(stderr, "socflow_example: %s\n", e.what());
        return 1;
    } catch (const std::exception &e) {
        std::fprintf(stderr, "socflow_example: %s\n", e.what());
        return 3;
    }
}
