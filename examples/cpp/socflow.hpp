// socflow.hpp: a header-only C++17 wrapper over the socflow C ABI (socflow.h).
//
// RAII, move-only owners for the three kinds of handle, and exceptions for errors:
//
//   socflow::Model model = socflow::Model::load("model.safetensors");
//   socflow::Controller ctl(model);                 // or (model, socflow::Precision::f32)
//   std::vector<double> x(ctl.state_dim()), u(ctl.control_dim());
//   ctl.control(0.0, x, u);                         // no allocation
//   socflow::Sampler sampler(model);                // socflow::SamplerOptions for more
//   std::vector<double> samples = sampler.sample(1000);
//
// Every failing call throws socflow::Error, which carries the status code and the
// library's message (socflow_last_error on the failing thread). For loops that must
// not throw, Controller::try_control returns the status instead. Destructors destroy
// the handle and never throw. Buffers are passed as socflow::Span: a pointer and a
// size, built implicitly from a std::vector, a std::array or a C array.
//
// Threads follow the C ABI: a Model and a Sampler may be used from many threads at
// once, a Controller from one thread at a time (create one per thread).

#ifndef SOCFLOW_HPP
#define SOCFLOW_HPP

#include <socflow.h>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <iterator>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace socflow {

/// A failed socflow call: the status code, its name and the library's message.
class Error : public std::runtime_error {
public:
    /// Builds the error of `call` having returned `status`; reads the calling
    /// thread's socflow_last_error(), so construct it right after the failure.
    Error(socflow_status status, const char *call)
        : std::runtime_error(std::string(call) + ": " + socflow_status_name(status) + ": " +
                             socflow_last_error()),
          status_(status), message_(socflow_last_error()) {}

    /// The status the call returned.
    socflow_status status() const noexcept { return status_; }
    /// The status's name, e.g. "SOCFLOW_ERROR_LENGTH".
    const char *status_name() const noexcept { return socflow_status_name(status_); }
    /// The library's message alone (what() also names the call and the status).
    const std::string &message() const noexcept { return message_; }

private:
    socflow_status status_;
    std::string message_;
};

namespace detail {

inline void check(socflow_status status, const char *call) {
    if (status != SOCFLOW_OK) {
        throw Error(status, call);
    }
}

/// Owns one handle: destroys it in the destructor, moves it, never copies it.
template <class Handle, socflow_status (*Destroy)(Handle)>
class Owner {
public:
    Owner() noexcept = default;
    explicit Owner(Handle h) noexcept : h_(h) {}
    Owner(const Owner &) = delete;
    Owner &operator=(const Owner &) = delete;
    Owner(Owner &&other) noexcept : h_(std::exchange(other.h_, Handle{})) {}
    Owner &operator=(Owner &&other) noexcept {
        if (this != &other) {
            reset();
            h_ = std::exchange(other.h_, Handle{});
        }
        return *this;
    }
    ~Owner() { reset(); }

    /// Destroys the handle now (a failure, which only a handle in use by another
    /// thread can cause, cannot be reported from a destructor and is ignored).
    void reset() noexcept {
        if (h_.id != 0) {
            (void)Destroy(h_);
            h_ = Handle{};
        }
    }
    Handle get() const noexcept { return h_; }
    explicit operator bool() const noexcept { return h_.id != 0; }

private:
    Handle h_{};
};

template <class C, class T>
using enable_if_buffer_t = std::enable_if_t<
    std::is_convertible_v<decltype(std::data(std::declval<C &>())), T *> &&
    std::is_convertible_v<decltype(std::size(std::declval<C &>())), std::size_t>>;

}  // namespace detail

/// A view of `size()` contiguous values (C++17 has no std::span): what the wrapper
/// takes for every buffer. Built from a pointer and a size, or implicitly from any
/// contiguous container (std::vector, std::array, a C array). It does not own the
/// values; keep them alive for the call.
template <class T>
class Span {
public:
    constexpr Span() noexcept = default;
    constexpr Span(T *data, std::size_t size) noexcept : data_(data), size_(size) {}
    template <class C, class = detail::enable_if_buffer_t<C, T>>
    constexpr Span(C &&c) noexcept  // NOLINT(google-explicit-constructor): a view
        : data_(std::data(c)), size_(std::size(c)) {}

    constexpr T *data() const noexcept { return data_; }
    constexpr std::size_t size() const noexcept { return size_; }
    constexpr bool empty() const noexcept { return size_ == 0; }
    constexpr T *begin() const noexcept { return data_; }
    constexpr T *end() const noexcept { return data_ + size_; }
    constexpr T &operator[](std::size_t i) const noexcept { return data_[i]; }

private:
    T *data_ = nullptr;
    std::size_t size_ = 0;
};

/// Precision of a controller's or a sampler's arithmetic (buffers are double either
/// way).
enum class Precision : std::uint32_t {
    f64 = SOCFLOW_PRECISION_F64,
    f32 = SOCFLOW_PRECISION_F32,
};

/// What a model is.
enum class ModelKind : std::uint32_t {
    potential = SOCFLOW_MODEL_POTENTIAL,  ///< Φ(t, x): OT-Flow, or an SOC value function
    velocity = SOCFLOW_MODEL_VELOCITY,    ///< v(t, x): flow matching, CNF
    score = SOCFLOW_MODEL_SCORE,          ///< ∇ₓ log p_t(x): diffusion
};

/// The name of a model kind ("potential", "velocity", "score").
inline const char *to_string(ModelKind kind) noexcept {
    switch (kind) {
    case ModelKind::potential:
        return "potential";
    case ModelKind::velocity:
        return "velocity";
    case ModelKind::score:
        return "score";
    }
    return "unknown";
}

/// Solvers of a sampler: ODE solvers (a flow's field, or a score model's
/// probability-flow ODE) and SDE solvers (a score model's reverse SDE).
enum class Solver : std::uint32_t {
    euler = SOCFLOW_SOLVER_EULER,    ///< explicit Euler, fixed steps
    heun = SOCFLOW_SOLVER_HEUN,      ///< Heun, fixed steps
    rk4 = SOCFLOW_SOLVER_RK4,        ///< classical Runge–Kutta, fixed steps
    dopri5 = SOCFLOW_SOLVER_DOPRI5,  ///< Dormand–Prince 5(4), adaptive steps
    euler_maruyama = SOCFLOW_SOLVER_EULER_MARUYAMA,    ///< reverse SDE, fixed steps
    stochastic_heun = SOCFLOW_SOLVER_STOCHASTIC_HEUN,  ///< reverse SDE, fixed steps
};

/// The library's version, "MAJOR.MINOR.PATCH".
inline std::string version() { return socflow_version(); }

/// What Model::info() reports.
struct ModelInfo {
    std::size_t state_dim = 0;        ///< d
    std::size_t control_dim = 0;      ///< controls (0: no controller)
    ModelKind kind = ModelKind::potential;
    double t0 = 0.0;                  ///< start of the time interval
    double t1 = 0.0;                  ///< end of the time interval
    std::size_t parameter_count = 0;  ///< trained parameters
};

/// A loaded model (move-only). Immutable: share one between threads freely.
class Model {
public:
    /// Loads and validates a model file.
    static Model load(const std::string &path) {
        struct socflow_model h {};
        detail::check(socflow_model_load(path.c_str(), &h), "socflow_model_load");
        return Model(h);
    }

    /// Loads a model from the bytes of a model file (the library copies what it
    /// needs, so `bytes` may go once this returns).
    static Model from_buffer(Span<const std::uint8_t> bytes) {
        struct socflow_model h {};
        detail::check(socflow_model_load_buffer(bytes.data(), bytes.size(), &h),
                      "socflow_model_load_buffer");
        return Model(h);
    }

    /// Loads a model from `size` bytes at `data`.
    static Model from_buffer(const void *data, std::size_t size) {
        return from_buffer(Span<const std::uint8_t>(static_cast<const std::uint8_t *>(data), size));
    }

    /// Dimensions, kind, time interval and size of the model.
    ModelInfo info() const {
        struct socflow_model_info i {};
        detail::check(socflow_model_get_info(h_.get(), &i), "socflow_model_get_info");
        ModelInfo out;
        out.state_dim = i.state_dim;
        out.control_dim = i.control_dim;
        out.kind = static_cast<ModelKind>(i.kind);
        out.t0 = i.t0;
        out.t1 = i.t1;
        out.parameter_count = i.parameter_count;
        return out;
    }

    /// The C handle (still owned by this object).
    struct socflow_model handle() const noexcept { return h_.get(); }
    /// False once moved from.
    explicit operator bool() const noexcept { return static_cast<bool>(h_); }

private:
    explicit Model(struct socflow_model h) noexcept : h_(h) {}
    detail::Owner<struct socflow_model, &socflow_model_destroy> h_;
};

/// Options of Controller::simulate.
struct SimulateOptions {
    std::vector<double> x0;    ///< initial state of every path (state_dim values)
    double t0 = 0.0;           ///< start time
    double t1 = 1.0;           ///< end time (> t0)
    std::size_t steps = 100;   ///< Euler–Maruyama steps
    double sigma = 0.0;        ///< noise level: dz = f dt + sigma dW
    std::size_t paths = 1;     ///< independent paths
    std::uint64_t seed = 0;    ///< seed of the Brownian increments
    std::size_t threads = 0;   ///< worker threads (0: the library's shared pool)
    bool trajectories = false; ///< also return every state along every path
};

/// What Controller::simulate returns.
struct Rollout {
    std::size_t paths = 0;
    std::size_t steps = 0;
    std::size_t state_dim = 0;
    std::vector<double> final_states;  ///< paths × state_dim
    std::vector<double> costs;         ///< paths: ∫L dt + g(z(t1))
    std::vector<double> trajectories;  ///< paths × (steps + 1) × state_dim, or empty

    /// The mean cost over the paths.
    double mean_cost() const noexcept {
        double s = 0.0;
        for (double c : costs) {
            s += c;
        }
        return costs.empty() ? 0.0 : s / static_cast<double>(costs.size());
    }
};

/// Controlled dynamics dz = f(t, z, u) dt + σ dW and costs, as C++ callables. They
/// are called from the library's worker threads, several at once: they must be safe
/// to call concurrently. An exception thrown by one stops the roll-out and is
/// rethrown by Controller::simulate.
struct Dynamics {
    std::size_t state_dim = 0;
    std::size_t control_dim = 0;
    /// f(t, x, u) → dx (state_dim values). Required.
    std::function<void(double t, const double *x, const double *u, double *dx)> drift;
    /// L(t, x, u); empty: zero.
    std::function<double(double t, const double *x, const double *u)> running_cost;
    /// g(x); empty: zero.
    std::function<double(const double *x)> terminal_cost;
};

namespace detail {

/// What the C callbacks of a Dynamics see: the callables and the first exception.
struct DynamicsContext {
    const Dynamics *dynamics;
    std::mutex mutex;
    std::exception_ptr failure;

    // No exception may unwind into the library: keep the first, return nonzero.
    template <class F>
    std::int32_t guard(F &&f) noexcept {
        try {
            f();
            return 0;
        } catch (...) {
            std::lock_guard<std::mutex> lock(mutex);
            if (!failure) {
                failure = std::current_exception();
            }
            return 1;
        }
    }

    static std::int32_t drift(void *user, double t, const double *x, const double *u, double *out) {
        auto *c = static_cast<DynamicsContext *>(user);
        return c->guard([&] { c->dynamics->drift(t, x, u, out); });
    }
    static std::int32_t running_cost(void *user, double t, const double *x, const double *u,
                                     double *out) {
        auto *c = static_cast<DynamicsContext *>(user);
        return c->guard([&] { *out = c->dynamics->running_cost(t, x, u); });
    }
    static std::int32_t terminal_cost(void *user, const double *x, double *out) {
        auto *c = static_cast<DynamicsContext *>(user);
        return c->guard([&] { *out = c->dynamics->terminal_cost(x); });
    }
};

}  // namespace detail

/// A feedback controller u(t, x) over a potential model (move-only). It owns scratch
/// buffers: use it from one thread at a time.
class Controller {
public:
    /// Creates a controller over `model`, computing in `precision`. The controller
    /// keeps what it needs: the model may be destroyed first.
    explicit Controller(const Model &model, Precision precision = Precision::f64) {
        struct socflow_controller h {};
        detail::check(
            socflow_controller_create(model.handle(), static_cast<std::uint32_t>(precision), &h),
            "socflow_controller_create");
        h_ = Owner(h);
        detail::check(socflow_controller_dims(h, &state_dim_, &control_dim_),
                      "socflow_controller_dims");
    }

    std::size_t state_dim() const noexcept { return state_dim_; }
    std::size_t control_dim() const noexcept { return control_dim_; }

    /// Computes u(t, x) into `u` (control_dim values) for `x` (state_dim values).
    /// Allocates nothing unless it fails.
    void control(double t, Span<const double> x, Span<double> u) {
        detail::check(try_control(t, x, u), "socflow_controller_control");
    }

    /// Computes u(t, x) without throwing: the status (socflow_last_error() has the
    /// message on failure). Allocates nothing.
    socflow_status try_control(double t, Span<const double> x, Span<double> u) noexcept {
        return socflow_controller_control(h_.get(), t, x.data(), x.size(), u.data(), u.size());
    }

    /// u(t, x) as a new vector (allocates; use the other overload in loops).
    std::vector<double> control(double t, Span<const double> x) {
        std::vector<double> u(control_dim_);
        control(t, x, u);
        return u;
    }

    /// The value Φ(t, x), the optimal cost-to-go.
    double value(double t, Span<const double> x) {
        double v = 0.0;
        detail::check(socflow_controller_value(h_.get(), t, x.data(), x.size(), &v),
                      "socflow_controller_value");
        return v;
    }

    /// Controls of a batch of states at one time: `xs` is n × state_dim (row-major),
    /// `us` receives n × control_dim values.
    void control_batch(double t, Span<const double> xs, Span<double> us) {
        detail::check(
            socflow_controller_control_batch(h_.get(), t, xs.data(), xs.size(), us.data(), us.size()),
            "socflow_controller_control_batch");
    }

    /// Controls of a batch as a new vector (n × control_dim).
    std::vector<double> control_batch(double t, Span<const double> xs) {
        std::vector<double> us(state_dim_ == 0 ? 0 : xs.size() / state_dim_ * control_dim_);
        control_batch(t, xs, us);
        return us;
    }

    /// Rolls out the closed loop under dz = u dt + σ dW with running cost ½‖u‖² (the
    /// OT-Flow and NeuralSOC benchmark dynamics; needs control_dim == state_dim).
    Rollout simulate(const SimulateOptions &options) { return run(options, nullptr); }

    /// Rolls out the closed loop under the given dynamics.
    Rollout simulate(const SimulateOptions &options, const Dynamics &dynamics) {
        detail::DynamicsContext context{&dynamics, {}, nullptr};
        socflow_dynamics c{};
        c.state_dim = dynamics.state_dim;
        c.control_dim = dynamics.control_dim;
        c.drift = dynamics.drift ? &detail::DynamicsContext::drift : nullptr;
        c.running_cost = dynamics.running_cost ? &detail::DynamicsContext::running_cost : nullptr;
        c.terminal_cost = dynamics.terminal_cost ? &detail::DynamicsContext::terminal_cost : nullptr;
        c.user = &context;
        return run(options, &c, &context);
    }

    /// The C handle (still owned by this object).
    struct socflow_controller handle() const noexcept { return h_.get(); }
    /// False once moved from.
    explicit operator bool() const noexcept { return static_cast<bool>(h_); }

private:
    using Owner = detail::Owner<struct socflow_controller, &socflow_controller_destroy>;

    Rollout run(const SimulateOptions &o, const socflow_dynamics *dynamics,
                detail::DynamicsContext *context = nullptr) {
        Rollout r;
        r.paths = o.paths;
        r.steps = o.steps;
        r.state_dim = state_dim_;
        r.final_states.resize(o.paths * state_dim_);
        r.costs.resize(o.paths);
        if (o.trajectories) {
            r.trajectories.resize(o.paths * (o.steps + 1) * state_dim_);
        }
        socflow_simulate_options c{};
        c.x0 = o.x0.data();
        c.x0_len = o.x0.size();
        c.t0 = o.t0;
        c.t1 = o.t1;
        c.steps = o.steps;
        c.sigma = o.sigma;
        c.paths = o.paths;
        c.seed = o.seed;
        c.threads = o.threads;
        socflow_status st = socflow_controller_simulate(
            h_.get(), &c, dynamics, r.final_states.data(), r.final_states.size(), r.costs.data(),
            r.costs.size(), o.trajectories ? r.trajectories.data() : nullptr, r.trajectories.size());
        if (st == SOCFLOW_ERROR_CALLBACK && context != nullptr && context->failure) {
            std::rethrow_exception(context->failure);
        }
        detail::check(st, "socflow_controller_simulate");
        return r;
    }

    Owner h_;
    std::size_t state_dim_ = 0;
    std::size_t control_dim_ = 0;
};

/// Options of a Sampler; a default-constructed one holds the library's defaults
/// (RK4, 32 steps, tolerances 1e-5, seed 0, f64, no log-densities, shared pool).
struct SamplerOptions {
    Solver solver;
    std::size_t steps;          ///< steps of a fixed-step solver (ODE or SDE)
    double rtol;                ///< relative tolerance of dopri5
    double atol;                ///< absolute tolerance of dopri5
    std::uint64_t seed;         ///< sample i's prior draw (and noise) keyed by (seed, i)
    Precision precision;
    bool log_density;           ///< also compute log-densities (exact trace; ODE solvers)
    std::size_t threads;        ///< worker threads (0: the library's shared pool)

    SamplerOptions() {
        socflow_sampler_options o{};
        detail::check(socflow_sampler_options_default(&o), "socflow_sampler_options_default");
        solver = static_cast<Solver>(o.solver);
        steps = o.steps;
        rtol = o.rtol;
        atol = o.atol;
        seed = o.seed;
        precision = static_cast<Precision>(o.precision);
        log_density = o.log_density != 0;
        threads = o.threads;
    }
};

/// A sampler over a potential or velocity model, or a score model (its
/// probability-flow ODE with an ODE solver, its reverse SDE with
/// Solver::euler_maruyama or Solver::stochastic_heun); move-only. Read-only once
/// made: several threads may draw from one sampler at once.
class Sampler {
public:
    explicit Sampler(const Model &model, const SamplerOptions &options = SamplerOptions()) {
        socflow_sampler_options o{};
        o.solver = static_cast<std::uint32_t>(options.solver);
        o.steps = options.steps;
        o.rtol = options.rtol;
        o.atol = options.atol;
        o.seed = options.seed;
        o.precision = static_cast<std::uint32_t>(options.precision);
        o.log_density = options.log_density ? 1u : 0u;
        o.threads = options.threads;
        struct socflow_sampler h {};
        detail::check(socflow_sampler_create(model.handle(), &o, &h), "socflow_sampler_create");
        h_ = Owner(h);
        detail::check(socflow_sampler_dim(h, &dim_), "socflow_sampler_dim");
    }

    /// Values per sample.
    std::size_t dim() const noexcept { return dim_; }

    /// Draws samples first .. first + n into `samples` (n × dim values, n =
    /// samples.size() / dim) and, when `log_density` is not empty, their
    /// log-densities (n values; needs SamplerOptions::log_density).
    void sample_into(std::uint64_t first, Span<double> samples,
                     Span<double> log_density = {}) const {
        detail::check(socflow_sampler_sample(h_.get(), first, samples.data(), samples.size(),
                                             log_density.empty() ? nullptr : log_density.data(),
                                             log_density.size()),
                      "socflow_sampler_sample");
    }

    /// Samples first .. first + n as a new vector (n × dim, row-major).
    std::vector<double> sample(std::size_t n, std::uint64_t first = 0) const {
        std::vector<double> x(n * dim_);
        sample_into(first, x);
        return x;
    }

    /// The C handle (still owned by this object).
    struct socflow_sampler handle() const noexcept { return h_.get(); }
    /// False once moved from.
    explicit operator bool() const noexcept { return static_cast<bool>(h_); }

private:
    using Owner = detail::Owner<struct socflow_sampler, &socflow_sampler_destroy>;
    Owner h_;
    std::size_t dim_ = 0;
};

}  // namespace socflow

#endif  // SOCFLOW_HPP
