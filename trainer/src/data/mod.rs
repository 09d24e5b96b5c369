//! Training data: toy distributions, user files, splits, normalization, mini-batches.
//!
//! - [`Toy`]: the seeded 2-D toys of FFJORD / OT-Flow (formulas in [`toy`]);
//! - [`load_dataset`]: a user's `.npy` (2-D float array) or `.csv` ([`csv`]) file as a
//!   [`Dataset`] of `n` samples in `d` dimensions;
//! - [`Dataset::split`]: a seeded train/validation split;
//! - [`Dataset::normalization`] and [`Dataset::normalize`]: per-coordinate
//!   standardization, recorded in the model artifact as a [`Normalization`] so that
//!   the runtime maps samples back to data coordinates;
//! - [`BatchSampler`]: mini-batches from a seeded shuffle per epoch.
//!
//! All randomness is counter-based ([`rng`]): a result depends on its seed and sizes,
//! never on thread count or call order.

pub mod csv;
pub mod rng;
pub mod toy;

use std::path::Path;

use socflow_runtime::artifact::Normalization;
use socflow_runtime::brownian::MAX_STEP;

pub use self::csv::{parse_csv, read_csv};
pub use self::toy::Toy;
use crate::error::{check_len, Error, Result};

/// `n` samples of dimension `d`, row-major in `x` (`x.len() == n·d`).
///
/// [`Dataset::new`] checks the shape and that every value is finite; the methods
/// re-check the shape (the fields are public) and return [`Error::Length`] when a
/// caller has broken it.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Number of samples (rows).
    pub n: usize,
    /// Dimension of a sample (columns).
    pub d: usize,
    /// The samples, row-major.
    pub x: Vec<f64>,
}

impl Dataset {
    /// A data set of `n ≥ 1` samples of dimension `d ≥ 1`.
    ///
    /// Errors: [`Error::Data`] for `n == 0` or `d == 0`; [`Error::Length`] when `x` is
    /// not `n·d` long; [`Error::NonFinite`] naming the first NaN or infinite entry.
    pub fn new(n: usize, d: usize, x: Vec<f64>) -> Result<Self> {
        if n == 0 || d == 0 {
            return Err(Error::Data(format!(
                "a data set needs at least one sample and one dimension, got {n}×{d}"
            )));
        }
        let len = n
            .checked_mul(d)
            .ok_or_else(|| Error::Data(format!("{n}×{d} samples overflow")))?;
        check_len("data set values", x.len(), len)?;
        if let Some(k) = x.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite(format!(
                "data set at sample {}, coordinate {}: {}",
                k / d,
                k % d,
                x[k]
            )));
        }
        Ok(Dataset { n, d, x })
    }

    /// `n` samples of a toy distribution drawn with `seed` ([`Toy::sample`]).
    pub fn from_toy(toy: Toy, n: usize, seed: u64) -> Result<Self> {
        Dataset::new(n, toy.dim(), toy.sample(n, seed)?)
    }

    /// Sample `i`, or `None` past the end.
    pub fn row(&self, i: usize) -> Option<&[f64]> {
        self.x
            .get(i.checked_mul(self.d)?..(i + 1).checked_mul(self.d)?)
    }

    fn check_shape(&self) -> Result<()> {
        let len = self
            .n
            .checked_mul(self.d)
            .ok_or_else(|| Error::Data(format!("{}×{} samples overflow", self.n, self.d)))?;
        check_len("data set values", self.x.len(), len)?;
        if self.d == 0 {
            return Err(Error::Data("a data set of dimension 0".into()));
        }
        Ok(())
    }

    /// Splits the samples into (training, validation) sets: a uniformly random
    /// permutation from `seed` (on [`rng::SPLIT_STREAM`]), the first
    /// `round(train_fraction · n)` samples of it for training, the rest for
    /// validation, each in permutation order.
    ///
    /// Errors: [`Error::InvalidArgument`] unless `0 < train_fraction < 1` and both
    /// parts get at least one sample.
    pub fn split(&self, train_fraction: f64, seed: u64) -> Result<(Dataset, Dataset)> {
        self.check_shape()?;
        if !(train_fraction > 0.0 && train_fraction < 1.0) {
            return Err(Error::InvalidArgument(format!(
                "training fraction {train_fraction} is not strictly between 0 and 1"
            )));
        }
        let n_train = (train_fraction * self.n as f64).round() as usize;
        if n_train == 0 || n_train >= self.n {
            return Err(Error::InvalidArgument(format!(
                "a {train_fraction} split of {} samples leaves {n_train} for training and {} \
                 for validation; both need at least one",
                self.n,
                self.n.saturating_sub(n_train)
            )));
        }
        let perm = rng::permutation(self.n, seed, rng::SPLIT_STREAM, 0)?;
        let (a, b) = perm.split_at(n_train);
        Ok((self.subset(a)?, self.subset(b)?))
    }

    /// The samples at `indices`, in that order.
    ///
    /// Errors: [`Error::InvalidArgument`] for an index `≥ n`; [`Error::Data`] for an
    /// empty `indices`.
    pub fn subset(&self, indices: &[usize]) -> Result<Dataset> {
        self.check_shape()?;
        let mut x = vec![0.0; indices.len() * self.d];
        self.gather(indices, &mut x)?;
        Dataset::new(indices.len(), self.d, x)
    }

    /// Copies the samples at `indices` into `out` (row-major, `indices.len()·d`).
    ///
    /// Errors: [`Error::Length`] for a wrong `out`; [`Error::InvalidArgument`] for an
    /// index `≥ n`.
    pub fn gather(&self, indices: &[usize], out: &mut [f64]) -> Result<()> {
        self.check_shape()?;
        let d = self.d;
        check_len("gathered rows", out.len(), indices.len() * d)?;
        for (&i, dst) in indices.iter().zip(out.chunks_exact_mut(d)) {
            let src = self.row(i).ok_or_else(|| {
                Error::InvalidArgument(format!("sample index {i} of a {}-sample set", self.n))
            })?;
            dst.copy_from_slice(src);
        }
        Ok(())
    }

    /// Per-coordinate mean and standard deviation (population: divided by n, as
    /// scikit-learn's `StandardScaler`), computed in two passes.
    ///
    /// A coordinate whose standard deviation is 0, or at most 2⁻⁵² times its largest
    /// |value| (constant up to rounding), is an error rather than a silent std of 1: a
    /// density on it would be degenerate, and the model should not see the column.
    ///
    /// Errors: [`Error::Data`] naming the first constant coordinate (a single sample
    /// is constant in every coordinate).
    pub fn normalization(&self) -> Result<Normalization> {
        self.check_shape()?;
        let (n, d) = (self.n as f64, self.d);
        let mut mean = vec![0.0; d];
        for row in self.x.chunks_exact(d) {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += v;
            }
        }
        for m in &mut mean {
            *m /= n;
        }
        let mut var = vec![0.0; d];
        let mut peak = vec![0.0f64; d];
        for row in self.x.chunks_exact(d) {
            for (((s, p), &m), &v) in var.iter_mut().zip(&mut peak).zip(&mean).zip(row) {
                *s += (v - m) * (v - m);
                *p = p.max(v.abs());
            }
        }
        let std: Vec<f64> = var.iter().map(|s| (s / n).sqrt()).collect();
        for (k, (&s, &p)) in std.iter().zip(&peak).enumerate() {
            if s <= p * f64::EPSILON || s == 0.0 {
                return Err(Error::Data(format!(
                    "coordinate {k} is constant (value {}) over the {} samples: it cannot be \
                     normalized or modelled as a density; drop it",
                    mean[k], self.n
                )));
            }
        }
        Ok(Normalization::new(mean, std)?)
    }

    /// Maps the samples to model coordinates in place: x ← (x − mean)/std.
    ///
    /// Errors: [`Error::Length`] when `norm` is for another dimension.
    pub fn normalize(&mut self, norm: &Normalization) -> Result<()> {
        self.check_norm(norm)?;
        norm.to_model(&mut self.x)?;
        Ok(())
    }

    /// Maps the samples back to data coordinates in place: x ← mean + std ⊙ x (the
    /// inverse of [`normalize`](Dataset::normalize)).
    ///
    /// Errors: [`Error::Length`] when `norm` is for another dimension.
    pub fn denormalize(&mut self, norm: &Normalization) -> Result<()> {
        self.check_norm(norm)?;
        norm.to_data(&mut self.x)?;
        Ok(())
    }

    fn check_norm(&self, norm: &Normalization) -> Result<()> {
        self.check_shape()?;
        check_len("normalization dimension", norm.dim(), self.d)?;
        check_len("normalization std dimension", norm.std.len(), self.d)
    }
}

/// Reads a user data set: a `.npy` file ([`read_npy`]) or a `.csv` file
/// ([`read_csv`]), chosen by the extension (ignoring case).
///
/// Errors: [`Error::InvalidArgument`] for another extension; the reader's errors.
pub fn load_dataset(path: impl AsRef<Path>) -> Result<Dataset> {
    let path = path.as_ref();
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("npy") => read_npy(path),
        Some("csv") => read_csv(path),
        _ => Err(Error::InvalidArgument(format!(
            "{}: unknown data file type; expected a .npy or .csv file",
            path.display()
        ))),
    }
}

/// Reads a 2-D `.npy` array of shape (samples, dimensions), float32 or float64
/// ([`socflow_runtime::npy::read_npy_f64`]).
///
/// Errors: the runtime's I/O and format errors; [`Error::Data`] for an array that is
/// not 2-D or has no samples or no columns; [`Error::NonFinite`] naming the first
/// NaN or infinite entry as `x[row, column]`.
pub fn read_npy(path: impl AsRef<Path>) -> Result<Dataset> {
    let path = path.as_ref();
    let (shape, x) = socflow_runtime::npy::read_npy_f64(path)?;
    let &[n, d] = shape.as_slice() else {
        return Err(Error::Data(format!(
            "{}: array of shape {shape:?}; expected 2-D (samples, dimensions) — reshape a \
             1-D array to (n, 1)",
            path.display()
        )));
    };
    if n == 0 || d == 0 {
        return Err(Error::Data(format!(
            "{}: array of shape {shape:?} holds no data",
            path.display()
        )));
    }
    if let Some(k) = x.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite(format!(
            "{} at x[{}, {}]: {}",
            path.display(),
            k / d,
            k % d,
            x[k]
        )));
    }
    Dataset::new(n, d, x)
}

/// Mini-batches of sample indices: each epoch a fresh uniformly random permutation
/// of `0..n` (Fisher–Yates on [`rng::BATCH_STREAM`], step = epoch), cut into
/// `⌊n / batch⌋` full batches; the `n mod batch` samples left at the end of an
/// epoch's permutation sit that epoch out. Batch `s` (a global step count) is batch
/// `s mod ⌊n/batch⌋` of epoch `s div ⌊n/batch⌋`, a pure function of `(n, batch, seed,
/// s)`: a resumed run sees the same batches.
#[derive(Clone, Debug)]
pub struct BatchSampler {
    n: usize,
    batch: usize,
    seed: u64,
    /// The epoch whose permutation `perm` holds.
    epoch: Option<u64>,
    perm: Vec<usize>,
}

impl BatchSampler {
    /// Batches of `batch` indices out of `n`.
    ///
    /// Errors: [`Error::InvalidArgument`] unless `1 ≤ batch ≤ n`.
    pub fn new(n: usize, batch: usize, seed: u64) -> Result<Self> {
        if batch == 0 || batch > n {
            return Err(Error::InvalidArgument(format!(
                "batch size {batch} for {n} samples (needs 1 ≤ batch ≤ samples)"
            )));
        }
        Ok(BatchSampler {
            n,
            batch,
            seed,
            epoch: None,
            perm: Vec::new(),
        })
    }

    /// Samples per batch.
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// Full batches per epoch: ⌊n / batch⌋.
    pub fn batches_per_epoch(&self) -> usize {
        self.n / self.batch
    }

    /// The indices of batch `step` (see the type docs). Reshuffles (O(n), no
    /// allocation after the first) when `step` enters another epoch.
    ///
    /// Errors: a limit error past epoch 2³² − 1.
    pub fn indices(&mut self, step: u64) -> Result<&[usize]> {
        let per_epoch = self.batches_per_epoch() as u64;
        let (epoch, k) = (step / per_epoch, (step % per_epoch) as usize);
        if epoch > MAX_STEP {
            return Err(socflow_runtime::Error::Limit(format!(
                "batch {step} is in epoch {epoch}, past the generator's {MAX_STEP}"
            ))
            .into());
        }
        if self.epoch != Some(epoch) {
            self.epoch = None;
            rng::permutation_into(self.n, self.seed, rng::BATCH_STREAM, epoch, &mut self.perm)?;
            self.epoch = Some(epoch);
        }
        Ok(&self.perm[k * self.batch..(k + 1) * self.batch])
    }

    /// Copies batch `step` of `data` into `out` (`batch·d` values, row-major).
    ///
    /// Errors: [`Error::InvalidArgument`] when `data` does not have the sampler's `n`
    /// samples; [`Error::Length`] for a wrong `out`.
    pub fn batch(&mut self, data: &Dataset, step: u64, out: &mut [f64]) -> Result<()> {
        if data.n != self.n {
            return Err(Error::InvalidArgument(format!(
                "batch sampler for {} samples used on a data set of {}",
                self.n, data.n
            )));
        }
        let idx = self.indices(step)?;
        data.gather(idx, out)
    }
}

/// The training and validation sets a trainer works on: with `normalize`, both
/// standardized with the training set's per-coordinate mean and standard deviation
/// (returned, for the artifact); otherwise copies of the sets as given.
pub fn normalized_sets(
    train: &Dataset,
    validation: Option<&Dataset>,
    normalize: bool,
) -> Result<(Dataset, Option<Dataset>, Option<Normalization>)> {
    if !normalize {
        return Ok((train.clone(), validation.cloned(), None));
    }
    let norm = train.normalization()?;
    let mut tr = train.clone();
    tr.normalize(&norm)?;
    let va = match validation {
        Some(v) => {
            let mut v = v.clone();
            v.normalize(&norm)?;
            Some(v)
        }
        None => None,
    };
    Ok((tr, va, Some(norm)))
}
