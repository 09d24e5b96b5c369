//! Reference solutions of stochastic optimal control problems (Riccati, Cole–Hopf).
