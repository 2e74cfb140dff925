//! The `logitkit._core` extension module: converts arrays and parameters, releases the GIL,
//! calls the kernels, maps errors. No arithmetic lives here.
//!
//! Logits arrive as 2-D C-contiguous arrays (the Python layer reshapes 1-D rows and copies
//! strided input) with a `kind`: 0 = float32, 1 = float16 bits, 2 = bfloat16 bits (both as
//! `uint16`, read in place).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};

use numpy::ndarray::{Dimension, Ix1, Ix2, IxDyn};
use numpy::npyffi::{PyArray_CheckExact, NPY_ARRAY_ALIGNED, NPY_ARRAY_C_CONTIGUOUS, NPY_TYPES};
use numpy::{
    Element, PyArray, PyArray1, PyArrayDescr, PyArrayDescrMethods, PyArrayMethods, PyReadonlyArray,
    PyReadwriteArray, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PySequence, PyString};

use crate::error::KernelError;
use crate::kernels::batch::{Request, RowResult};
use crate::kernels::elem::{as_bf16, as_f16, Elem};
use crate::kernels::{
    self, Bias, Filters, Mask, Order, Penalties, PerRow, RowLogprobs, TokenLists,
};
use crate::outputs::{empty_f32, new_output};
use crate::{philox, simd};

/// Below this many elements the GIL is kept: releasing it costs more than the work.
const GIL_MIN_ELEMENTS: usize = 8192;

fn value_error(e: KernelError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// `obj` as a NumPy array of `T`, borrowed for reading. An array that another call is writing
/// at the same time is refused with `ValueError` naming `name`.
fn read<'py, T: Element, D: Dimension>(
    obj: &Bound<'py, PyAny>,
    name: &str,
) -> PyResult<PyReadonlyArray<'py, T, D>> {
    obj.cast::<PyArray<T, D>>()?
        .try_readonly()
        .map_err(|_| in_use(name))
}

/// The shape of C-contiguous float32 logits handed over whole (`(V,)` or `(B, V)`, `V >= 1`)
/// and their `V`.
fn plain_shape(x: &PyReadonlyArray<'_, f32, IxDyn>) -> PyResult<(Vec<usize>, usize)> {
    let dims = x.shape().to_vec();
    let vocab = *dims
        .last()
        .filter(|&&v| v > 0 && dims.len() <= 2)
        .ok_or_else(|| PyValueError::new_err("logits: must be (V,) or (B, V) with V >= 1"))?;
    Ok((dims, vocab))
}

/// `obj` as a NumPy array of `T`, borrowed for writing; refused like [`read`] when another call
/// reads or writes it at the same time.
fn write<'py, T: Element, D: Dimension>(
    obj: &Bound<'py, PyAny>,
    name: &str,
) -> PyResult<PyReadwriteArray<'py, T, D>> {
    obj.cast::<PyArray<T, D>>()?
        .try_readwrite()
        .map_err(|_| in_use(name))
}

fn in_use(name: &str) -> PyErr {
    PyValueError::new_err(format!(
        "{name}: shares memory with an array that this call or another one running at the \
         same time writes (an out= array; concurrent calls must not share an out= array, nor \
         write an array that another call reads)"
    ))
}

/// Runs `f` on the logits as `&[f32]`, `&[F16]` or `&[Bf16]`, with the vocabulary size.
macro_rules! with_logits {
    ($x:expr, $kind:expr, |$s:ident, $vocab:ident| $body:expr) => {{
        if $kind == 0 {
            let arr = read::<f32, Ix2>($x, "logits")?;
            let $vocab = arr.shape()[1];
            let $s = arr.as_slice()?;
            $body
        } else {
            let arr = read::<u16, Ix2>($x, "logits")?;
            let $vocab = arr.shape()[1];
            let bits = arr.as_slice()?;
            if $kind == 1 {
                let $s = as_f16(bits);
                $body
            } else {
                let $s = as_bf16(bits);
                $body
            }
        }
    }};
}

/// Runs `f` without the GIL when the call is big enough to be worth it.
fn run<T: Send>(
    py: Python<'_>,
    elements: usize,
    f: impl FnOnce() -> Result<T, KernelError> + Send,
) -> PyResult<T> {
    // A panic (a broken assumption, such as another thread writing the logits during the
    // call) becomes a ValueError rather than pyo3's PanicException, a BaseException.
    let guarded = move || catch_unwind(AssertUnwindSafe(f));
    let res = if elements >= GIL_MIN_ELEMENTS {
        py.detach(guarded)
    } else {
        guarded()
    };
    match res {
        Ok(r) => r.map_err(value_error),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(PyValueError::new_err(format!(
                "logits: the call stopped on an inconsistency ({what}); the arrays of a call \
                 must not change while it runs"
            )))
        }
    }
}

fn is_number(obj: &Bound<'_, PyAny>) -> bool {
    obj.is_instance_of::<PyFloat>() || obj.is_instance_of::<PyInt>()
}

fn is_int(obj: &Bound<'_, PyAny>) -> bool {
    obj.is_instance_of::<PyInt>()
}

/// The `dtype.kind` of a NumPy scalar or array (`None` for Python numbers and other objects):
/// `'c'` for a complex one, which Python reads as a float, dropping its imaginary part.
fn numpy_kind(obj: &Bound<'_, PyAny>) -> Option<char> {
    if obj.is_instance_of::<PyFloat>() || obj.is_instance_of::<PyInt>() {
        return None;
    }
    obj.getattr("dtype")
        .and_then(|d| d.getattr("kind"))
        .and_then(|k| k.extract::<String>())
        .ok()
        .and_then(|k| k.chars().next())
}

/// `str(obj)` for an error message, or `logitkit._errors.described(obj)` when that raises (an
/// int too long for Python's `str`, more than 4300 digits, is described by its sign and size).
fn shown_obj(obj: &Bound<'_, PyAny>) -> String {
    obj.str().map(|s| s.to_string()).unwrap_or_else(|_| {
        obj.py()
            .import("logitkit._errors")
            .and_then(|m| m.call_method1("described", (obj,)))
            .and_then(|d| d.extract::<String>())
            .unwrap_or_else(|_| "<unprintable>".to_owned())
    })
}

// `logitkit.ParameterTypeError`: a parameter of the wrong type, both a `ValueError` and a
// `TypeError` (defined in Python, imported on first use).
pyo3::import_exception!(logitkit._errors, ParameterTypeError);

/// Defines `$name(obj, name, rows)`: a parameter given as one Python scalar (`$scalar` tells) or
/// as a 1-D array of `rows` values.
macro_rules! per_row_fn {
    ($name:ident, $t:ty, $scalar:ident, $what:literal) => {
        fn $name(obj: &Bound<'_, PyAny>, name: &str, rows: usize) -> PyResult<PerRow<$t>> {
            if $scalar(obj) {
                return obj.extract::<$t>().map(PerRow::All).map_err(|_| {
                    PyValueError::new_err(format!(
                        "{name}: must be {}, got {}",
                        $what,
                        shown_obj(obj)
                    ))
                });
            }
            if obj.cast::<PyArray1<$t>>().is_ok() {
                let a = read::<$t, Ix1>(obj, name)?;
                if a.len() != rows {
                    return Err(PyValueError::new_err(format!(
                        "{name}: has {} values for {rows} rows",
                        a.len()
                    )));
                }
                return match a.as_slice() {
                    Ok(values) => Ok(PerRow::Each(values.to_vec())),
                    // Strided or misaligned: read through a contiguous copy.
                    Err(_) => $name(&obj.call_method0("copy")?, name, rows),
                };
            }
            Err(ParameterTypeError::new_err(format!(
                "{name}: must be {} or a 1-D array of them",
                $what
            )))
        }
    };
}

per_row_fn!(per_row_f64, f64, is_number, "a number");
per_row_fn!(per_row_i64, i64, is_int, "an integer");
per_row_fn!(per_row_u64, u64, is_int, "an integer in [0, 2**64)");

/// Zips per-row values into one `PerRow` (shared when every input is shared).
fn zip_rows<V: Clone>(rows: usize, parts: &[bool], make: impl Fn(usize) -> V) -> PerRow<V> {
    if parts.iter().all(|&shared| shared) {
        PerRow::All(make(0))
    } else {
        PerRow::Each((0..rows).map(make).collect())
    }
}

fn is_all<V>(p: &PerRow<V>) -> bool {
    matches!(p, PerRow::All(_))
}

/// Reads one token list, an integer array or a sequence of ints, into `lists` (its ids checked
/// against `vocab`).
fn token_row(
    obj: &Bound<'_, PyAny>,
    name: &'static str,
    vocab: usize,
    lists: &mut TokenLists,
) -> PyResult<()> {
    // Integer arrays are read in place (a copy only when strided).
    macro_rules! array_of {
        ($t:ty) => {
            if obj.cast::<PyArray1<$t>>().is_ok() {
                let a = read::<$t, Ix1>(obj, name)?;
                let pushed = match a.as_slice() {
                    Ok(ids) => lists.push_row(name, ids, vocab),
                    Err(_) => lists.push_row(name, &a.as_array().to_vec(), vocab),
                };
                return pushed.map_err(value_error);
            }
        };
    }
    array_of!(i64);
    array_of!(i32);
    array_of!(u32);
    let is_ndarray = obj.cast::<PyUntypedArray>().is_ok();
    if !is_ndarray && (obj.hasattr("__array__")? || obj.hasattr("__dlpack__")?) {
        // Array-likes (a CPU `torch.Tensor`, objects with `__array__` or `__dlpack__`) are
        // read through NumPy once, as logits are.
        let np = obj.py().import("numpy")?;
        let how = if obj.hasattr("__array__")? {
            "asarray"
        } else {
            "from_dlpack"
        };
        // Both always return an ndarray (or raise), so the recursion ends there.
        let a = np.call_method1(how, (obj,)).map_err(|e| {
            PyTypeError::new_err(format!(
                "{name}: cannot be read as an array of token ids ({e})"
            ))
        })?;
        return token_row(&a, name, vocab, lists);
    }
    if obj.hasattr("dtype")? {
        let dtype = obj.getattr("dtype")?.str()?.to_string();
        let ndim: usize = obj.getattr("ndim")?.extract()?;
        if ndim != 1 {
            return Err(PyValueError::new_err(format!(
                "{name}: each token list must be 1-D, got ndim {ndim}"
            )));
        }
        // An empty array holds no ids whatever its dtype (`np.array([])` is float64).
        if obj.getattr("size")?.extract::<usize>()? == 0 {
            return lists.push_row::<i64>(name, &[], vocab).map_err(value_error);
        }
        // Other integer dtypes (narrower, uint64, or not in native byte order) through int64.
        let kind: String = obj.getattr("dtype")?.getattr("kind")?.extract()?;
        if kind != "i" && kind != "u" {
            return Err(PyTypeError::new_err(format!(
                "{name}: token ids must be integers, got dtype {dtype}"
            )));
        }
        if kind == "u" {
            // Ids of 2**63 and more would wrap around in int64: name them as they are.
            let big: u64 = obj.call_method0("max")?.extract()?;
            if big > i64::MAX as u64 {
                return Err(PyValueError::new_err(format!(
                    "{name}: token id {big} is out of range"
                )));
            }
        }
        let np = obj.py().import("numpy")?;
        let a = np.call_method1("asarray", (obj, "int64"))?;
        return token_row(&a, name, vocab, lists);
    }
    let ids = ids_of_sequence(obj, name)?;
    lists.push_row(name, &ids, vocab).map_err(value_error)
}

/// Why a Python object is not an `i64` token id.
enum NotAnId {
    /// `True` / `False`: an `int` to Python, but no token id.
    Bool,
    /// An integer (a Python or a NumPy one) beyond `i64`: an id out of range.
    Huge,
    /// Not an integer.
    NotInt,
}

/// `obj` as an `i64` token id.
fn id_of(obj: &Bound<'_, PyAny>) -> Result<i64, NotAnId> {
    if obj.is_instance_of::<PyBool>() {
        return Err(NotAnId::Bool);
    }
    obj.extract::<i64>().map_err(|_| {
        if is_int(obj) || obj.call_method0("__index__").is_ok() {
            NotAnId::Huge
        } else {
            NotAnId::NotInt
        }
    })
}

/// The ids of a sequence of Python ints.
fn ids_of_sequence(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Vec<i64>> {
    if obj.cast::<PySequence>().is_err() || obj.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(format!(
            "{name}: must be a 1-D int array or a sequence of ints"
        )));
    }
    let mut ids = Vec::with_capacity(obj.len().unwrap_or(0));
    for item in obj.try_iter()? {
        let item = item?;
        ids.push(id_of(&item).map_err(|why| match why {
            NotAnId::Bool => {
                PyTypeError::new_err(format!("{name}: token ids must be integers, got a bool"))
            }
            NotAnId::Huge => PyValueError::new_err(format!(
                "{name}: token id {} is out of range",
                shown_obj(&item)
            )),
            NotAnId::NotInt => PyTypeError::new_err(format!("{name}: token ids must be integers")),
        })?);
    }
    Ok(ids)
}

/// Reads token lists: `None`, one list (for one row), or a sequence of `rows` lists.
fn token_lists(
    obj: Option<&Bound<'_, PyAny>>,
    name: &'static str,
    rows: usize,
    vocab: usize,
    one_row: bool,
) -> PyResult<TokenLists> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(TokenLists::empty(rows));
    };
    let mut lists = TokenLists::empty(0);
    if one_row {
        token_row(obj, name, vocab, &mut lists)?;
        return Ok(lists);
    }
    // A sequence of rows, or a 2-D integer array (one row of ids per logits row).
    let is_2d = obj.hasattr("ndim")? && obj.getattr("ndim")?.extract::<usize>().ok() == Some(2);
    if !is_2d && obj.cast::<PySequence>().is_err() {
        return Err(PyTypeError::new_err(format!(
            "{name}: must be a sequence of {rows} token arrays"
        )));
    }
    let n = obj.len()?;
    if n != rows {
        return Err(PyValueError::new_err(format!(
            "{name}: has {n} token lists for {rows} rows"
        )));
    }
    for i in 0..n {
        token_row(&obj.get_item(i)?, name, vocab, &mut lists)?;
    }
    Ok(lists)
}

fn bias_row(
    obj: &Bound<'_, PyAny>,
    name: &'static str,
    vocab: usize,
    row: Option<usize>,
) -> PyResult<Bias> {
    let d = obj.cast::<PyDict>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{name}: must be a dict {{token_id: value}} or a sequence of them"
        ))
    })?;
    let mut ids = Vec::with_capacity(d.len());
    let mut vals = Vec::with_capacity(d.len());
    for (k, v) in d.iter() {
        let id = match id_of(&k) {
            Ok(id) if id >= 0 && (id as u64) < vocab as u64 => id,
            Ok(_) | Err(NotAnId::Huge) => {
                return Err(value_error(KernelError::param(
                    name,
                    row,
                    format!("token id {} is outside [0, {vocab})", shown_obj(&k)),
                )))
            }
            Err(NotAnId::Bool) => {
                return Err(ParameterTypeError::new_err(format!(
                    "{name}: token id {k} is a bool, not an integer"
                )))
            }
            Err(NotAnId::NotInt) => {
                return Err(ParameterTypeError::new_err(format!(
                    "{name}: token id {} is not an integer",
                    k.repr()
                        .map_or_else(|_| "<unprintable>".to_owned(), |r| r.to_string())
                )))
            }
        };
        // Refused: a Python or NumPy bool (`np.bool_` reads as a number) and a NumPy complex
        // (read as a float without its imaginary part); one look at the NumPy kind serves both.
        let kind = numpy_kind(&v);
        if v.is_instance_of::<PyBool>() || kind == Some('b') {
            return Err(ParameterTypeError::new_err(format!(
                "{name}: value for token {id} is a bool, not a number"
            )));
        }
        if kind == Some('c') {
            return Err(ParameterTypeError::new_err(format!(
                "{name}: value for token {id} is complex, not a real number"
            )));
        }
        let val: f64 = v.extract().map_err(|_| {
            if is_int(&v) {
                // An int beyond the float64 range: finite, but no float holds it.
                value_error(KernelError::param(
                    name,
                    row,
                    format!("value for token {id} is beyond the float64 range"),
                ))
            } else {
                ParameterTypeError::new_err(format!("{name}: value for token {id} is not a number"))
            }
        })?;
        if let Some(why) = kernels::bad_bias_value(id as u32, val) {
            return Err(value_error(KernelError::param(name, row, why)));
        }
        ids.push(id as u32);
        vals.push(val);
    }
    Ok((ids, vals))
}

fn bias_rows(
    obj: &Bound<'_, PyAny>,
    name: &'static str,
    rows: usize,
    vocab: usize,
) -> PyResult<PerRow<Bias>> {
    if obj.cast::<PyDict>().is_ok() {
        return Ok(PerRow::All(bias_row(obj, name, vocab, None)?));
    }
    let seq = obj.cast::<PySequence>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{name}: must be a dict {{token_id: value}} or a sequence of them"
        ))
    })?;
    let n = seq.len()?;
    if n != rows {
        return Err(PyValueError::new_err(format!(
            "{name}: has {n} dicts for {rows} rows"
        )));
    }
    (0..n)
        .map(|r| bias_row(&seq.get_item(r)?, name, vocab, Some(r)))
        .collect::<PyResult<Vec<_>>>()
        .map(PerRow::Each)
}

/// `softmax` (or `log_softmax`) of `x` into `out`; with `x = None`, of `out` itself (in place).
#[pyfunction]
fn softmax(
    py: Python<'_>,
    x: Option<&Bound<'_, PyAny>>,
    kind: u8,
    temperature: f64,
    log: bool,
    out: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let mut out = write::<f32, Ix2>(out, "out")?;
    let vocab = out.shape()[1];
    let o = out.as_slice_mut()?;
    match x {
        None => run(py, o.len(), || {
            kernels::softmax_in_place(o, vocab, temperature, log)
        }),
        Some(x) => with_logits!(x, kind, |s, vocab| run(py, s.len(), || kernels::softmax(
            s,
            vocab,
            temperature,
            log,
            o
        ))),
    }
}

/// `softmax` (or `log_softmax`) of a C-contiguous float32 array of 1 or 2 dimensions into a new
/// array of its shape: the common call, with no Python-side allocation.
#[pyfunction]
fn softmax_new<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    temperature: f64,
    log: bool,
) -> PyResult<Bound<'py, PyArray<f32, IxDyn>>> {
    let x = read::<f32, IxDyn>(x, "logits")?;
    let (dims, vocab) = plain_shape(&x)?;
    let s = x.as_slice()?;
    // The array is not seen from Python before every element is written (softmax writes all of
    // them); on an error it is dropped unseen.
    let out = new_output(py, &dims)?;
    {
        let mut w = out.try_readwrite().map_err(|_| in_use("out"))?;
        let o = w.as_slice_mut()?;
        run(py, s.len(), || {
            kernels::softmax(s, vocab, temperature, log, o)
        })?;
    }
    Ok(out)
}

/// `argmax` of one C-contiguous float32 row (`(V,)`): the index, with no array allocated.
#[pyfunction]
fn argmax_row(py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<i64> {
    let x = read::<f32, Ix1>(x, "logits")?;
    let s = x.as_slice()?;
    let mut o = [0i64];
    run(py, s.len(), || kernels::argmax(s, s.len(), &mut o))?;
    Ok(o[0])
}

/// `argmax` of every row of a C-contiguous float32 `(B, V)` array, into a new int64 array.
#[pyfunction]
fn argmax_rows<'py>(py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let x = read::<f32, Ix2>(x, "logits")?;
    let (rows, vocab) = (x.shape()[0], x.shape()[1]);
    let s = x.as_slice()?;
    let out = PyArray1::<i64>::zeros(py, rows, false);
    {
        let mut w = out.try_readwrite().map_err(|_| in_use("out"))?;
        let o = w.as_slice_mut()?;
        run(py, s.len(), || kernels::argmax(s, vocab, o))?;
    }
    Ok(out)
}

#[pyfunction]
fn argmax(py: Python<'_>, x: &Bound<'_, PyAny>, kind: u8, out: &Bound<'_, PyAny>) -> PyResult<()> {
    let mut out = write::<i64, Ix1>(out, "out")?;
    let o = out.as_slice_mut()?;
    with_logits!(x, kind, |s, vocab| run(py, s.len(), || kernels::argmax(
        s, vocab, o
    )))
}

#[pyfunction]
fn top_k(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    kind: u8,
    k: usize,
    values: &Bound<'_, PyAny>,
    indices: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let mut values = write::<f32, Ix2>(values, "values")?;
    let mut indices = write::<i64, Ix2>(indices, "indices")?;
    let v = values.as_slice_mut()?;
    let i = indices.as_slice_mut()?;
    with_logits!(x, kind, |s, vocab| run(py, s.len(), || kernels::top_k(
        s, vocab, k, v, i
    )))
}

/// The values and the indices of `top_k_new`.
type TopKArrays<'py> = (
    Bound<'py, PyArray<f32, IxDyn>>,
    Bound<'py, PyArray<i64, IxDyn>>,
);

/// `top_k` of a C-contiguous float32 array of 1 or 2 dimensions into new `(..., k)` arrays of
/// values and indices: the common call, with no Python-side allocation.
#[pyfunction]
fn top_k_new<'py>(py: Python<'py>, x: &Bound<'py, PyAny>, k: usize) -> PyResult<TopKArrays<'py>> {
    let x = read::<f32, IxDyn>(x, "logits")?;
    let (dims, vocab) = plain_shape(&x)?;
    let s = x.as_slice()?;
    let mut shape = dims;
    let last = shape.len() - 1; // plain_shape: 1 or 2 dimensions
    shape[last] = k; // (..., V) -> (..., k)
    let values = PyArray::<f32, IxDyn>::zeros(py, shape.as_slice(), false);
    let indices = PyArray::<i64, IxDyn>::zeros(py, shape.as_slice(), false);
    {
        let mut v = values.try_readwrite().map_err(|_| in_use("values"))?;
        let mut i = indices.try_readwrite().map_err(|_| in_use("indices"))?;
        let (v, i) = (v.as_slice_mut()?, i.as_slice_mut()?);
        run(py, s.len(), || kernels::top_k(s, vocab, k, v, i))?;
    }
    Ok((values, indices))
}

/// The filter that `which` (`"top_k"`, `"top_p"` or `"min_p"`) names.
fn mask_of(which: &str, value: f64, temperature: f64, min_keep: usize) -> Mask {
    match which {
        "top_k" => Mask::TopK(value as usize),
        "top_p" => Mask::TopP {
            top_p: value,
            temperature,
            min_keep,
        },
        _ => Mask::MinP {
            min_p: value,
            temperature,
            min_keep,
        },
    }
}

/// A mask of `x` into `out`; with `x = None`, of `out` itself (in place).
#[pyfunction]
#[pyo3(signature = (x, kind, which, value, temperature, min_keep, out))]
#[allow(clippy::too_many_arguments)]
fn mask(
    py: Python<'_>,
    x: Option<&Bound<'_, PyAny>>,
    kind: u8,
    which: &str,
    value: f64,
    temperature: f64,
    min_keep: usize,
    out: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let mut out = write::<f32, Ix2>(out, "out")?;
    let vocab = out.shape()[1];
    let m = mask_of(which, value, temperature, min_keep);
    let o = out.as_slice_mut()?;
    match x {
        None => run(py, o.len(), || kernels::mask_in_place(o, vocab, m)),
        Some(x) => with_logits!(x, kind, |s, vocab| run(py, s.len(), || kernels::mask(
            s, vocab, m, o
        ))),
    }
}

/// A mask of a C-contiguous float32 array of 1 or 2 dimensions into a new array of its shape:
/// the common call, with no Python-side allocation.
#[pyfunction]
fn mask_new<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    which: &str,
    value: f64,
    temperature: f64,
    min_keep: usize,
) -> PyResult<Bound<'py, PyArray<f32, IxDyn>>> {
    let x = read::<f32, IxDyn>(x, "logits")?;
    let (dims, vocab) = plain_shape(&x)?;
    let s = x.as_slice()?;
    let m = mask_of(which, value, temperature, min_keep);
    // As in `softmax_new`: a mask writes every element, and on an error the array is dropped
    // unseen.
    let out = new_output(py, &dims)?;
    {
        let mut w = out.try_readwrite().map_err(|_| in_use("out"))?;
        let o = w.as_slice_mut()?;
        run(py, s.len(), || kernels::mask(s, vocab, m, o))?;
    }
    Ok(out)
}

#[pyfunction]
#[pyo3(signature = (x, kind, out, one_row, bias=None, prompt_tokens=None, output_tokens=None, repetition_penalty=None, presence_penalty=None, frequency_penalty=None))]
#[allow(clippy::too_many_arguments)]
fn bias_and_penalties(
    py: Python<'_>,
    x: Option<&Bound<'_, PyAny>>,
    kind: u8,
    out: &Bound<'_, PyAny>,
    one_row: bool,
    bias: Option<&Bound<'_, PyAny>>,
    prompt_tokens: Option<&Bound<'_, PyAny>>,
    output_tokens: Option<&Bound<'_, PyAny>>,
    repetition_penalty: Option<&Bound<'_, PyAny>>,
    presence_penalty: Option<&Bound<'_, PyAny>>,
    frequency_penalty: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let mut out = write::<f32, Ix2>(out, "out")?;
    let (rows, vocab) = (out.shape()[0], out.shape()[1]);
    // The bias's parameter: `logit_bias` in `apply_penalties` (the one caller that passes
    // penalties), `bias` in `apply_logit_bias`.
    let bias_name = if repetition_penalty.is_some() {
        "logit_bias"
    } else {
        "bias"
    };
    let bias = bias
        .map(|b| bias_rows(b, bias_name, rows, vocab))
        .transpose()?;
    let pen = match repetition_penalty {
        None => None,
        Some(rep) => {
            let rep = per_row_f64(rep, "repetition_penalty", rows)?;
            let pres = per_row_f64(
                presence_penalty.expect("presence_penalty"),
                "presence_penalty",
                rows,
            )?;
            let freq = per_row_f64(
                frequency_penalty.expect("frequency_penalty"),
                "frequency_penalty",
                rows,
            )?;
            let shared = [is_all(&rep), is_all(&pres), is_all(&freq)];
            let p = zip_rows(rows, &shared, |r| Penalties {
                repetition: *rep.get(r),
                presence: *pres.get(r),
                frequency: *freq.get(r),
            });
            let prompt = token_lists(prompt_tokens, "prompt_tokens", rows, vocab, one_row)?;
            let output = token_lists(output_tokens, "output_tokens", rows, vocab, one_row)?;
            Some((prompt, output, p))
        }
    };
    let o = out.as_slice_mut()?;
    let pen_ref = pen.as_ref().map(|(a, b, c)| (a, b, c));
    match x {
        None => run(py, o.len(), || {
            kernels::bias_and_penalties::<f32>(None, vocab, bias.as_ref(), pen_ref, o)
        }),
        Some(x) => with_logits!(x, kind, |s, v| run(py, s.len(), || {
            kernels::bias_and_penalties(Some(s), v, bias.as_ref(), pen_ref, o)
        })),
    }
}

#[pyfunction]
#[pyo3(signature = (x, kind, temperature, top_k, top_p, min_p, min_keep, order, seed, step, uniforms, out))]
#[allow(clippy::too_many_arguments)]
fn sample(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    kind: u8,
    temperature: &Bound<'_, PyAny>,
    top_k: &Bound<'_, PyAny>,
    top_p: &Bound<'_, PyAny>,
    min_p: &Bound<'_, PyAny>,
    min_keep: &Bound<'_, PyAny>,
    order: &str,
    seed: &Bound<'_, PyAny>,
    step: &Bound<'_, PyAny>,
    uniforms: Option<&Bound<'_, PyAny>>,
    out: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let mut out = write::<i64, Ix1>(out, "out")?;
    let uniforms = uniforms
        .map(|u| read::<f64, Ix1>(u, "uniforms"))
        .transpose()?;
    let rows = out.len();
    let order = Order::parse(order).ok_or_else(|| {
        PyValueError::new_err(format!(
            "order: must be 'default', 'vllm' or 'llama.cpp', got {order:?}"
        ))
    })?;
    let t = per_row_f64(temperature, "temperature", rows)?;
    let k = per_row_i64(top_k, "top_k", rows)?;
    let p = per_row_f64(top_p, "top_p", rows)?;
    let mp = per_row_f64(min_p, "min_p", rows)?;
    let mk = per_row_i64(min_keep, "min_keep", rows)?;
    for (r, &v) in mk.iter() {
        if v < 1 {
            return Err(value_error(KernelError::param(
                "min_keep",
                r,
                format!("must be >= 1, got {v}"),
            )));
        }
    }
    let shared = [is_all(&t), is_all(&k), is_all(&p), is_all(&mp), is_all(&mk)];
    let filters = zip_rows(rows, &shared, |r| Filters {
        temperature: *t.get(r),
        top_k: *k.get(r),
        top_p: *p.get(r),
        min_p: *mp.get(r),
        min_keep: usize::try_from(*mk.get(r)).unwrap_or(usize::MAX),
        order,
    });
    let u: Vec<f64> = match &uniforms {
        Some(a) => {
            let u = a.as_slice()?;
            if u.len() != rows {
                return Err(PyValueError::new_err(format!(
                    "uniforms: has {} values for {rows} rows",
                    u.len()
                )));
            }
            u.to_vec()
        }
        None => {
            let seed = per_row_u64(seed, "seed", rows)?;
            let step = per_row_u64(step, "step", rows)?;
            (0..rows)
                .map(|r| philox::uniform(*seed.get(r), *step.get(r)))
                .collect()
        }
    };
    let o = out.as_slice_mut()?;
    with_logits!(x, kind, |s, vocab| run(py, s.len(), || kernels::sample(
        s, vocab, &filters, &u, o
    )))
}

/// `sample` for the common call: a C-contiguous array of one or two dimensions (`kind` as in
/// `with_logits`), scalar parameters, an integer step and a seed that is an integer or a uint64
/// array of one per row. Returns the token of a 1-D row, or fills `out`.
#[pyfunction]
#[pyo3(signature = (x, kind, temperature, top_k, top_p, min_p, min_keep, order, seed, step, out=None))]
#[allow(clippy::too_many_arguments)]
fn sample_fast(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    kind: u8,
    temperature: f64,
    top_k: i64,
    top_p: f64,
    min_p: f64,
    min_keep: i64,
    order: &str,
    seed: &Bound<'_, PyAny>,
    step: u64,
    out: Option<&Bound<'_, PyAny>>,
) -> PyResult<i64> {
    let filters = fast_filters(temperature, top_k, top_p, min_p, min_keep, order)?;
    if kind == 0 {
        let x = read::<f32, IxDyn>(x, "logits")?;
        let vocab = *x.shape().last().unwrap_or(&0);
        sample_fast_on(py, x.as_slice()?, vocab, &filters, seed, step, out)
    } else {
        let x = read::<u16, IxDyn>(x, "logits")?;
        let vocab = *x.shape().last().unwrap_or(&0);
        sample_fast_halves(py, x.as_slice()?, kind, vocab, &filters, seed, step, out)
    }
}

/// [`sample_fast_on`] on the bits of float16 (`kind` 1) or bfloat16 (`kind` 2) logits.
#[allow(clippy::too_many_arguments)]
fn sample_fast_halves(
    py: Python<'_>,
    bits: &[u16],
    kind: u8,
    vocab: usize,
    filters: &PerRow<Filters>,
    seed: &Bound<'_, PyAny>,
    step: u64,
    out: Option<&Bound<'_, PyAny>>,
) -> PyResult<i64> {
    if kind == 1 {
        sample_fast_on(py, as_f16(bits), vocab, filters, seed, step, out)
    } else {
        sample_fast_on(py, as_bf16(bits), vocab, filters, seed, step, out)
    }
}

/// The shared filters of [`sample_fast`] and [`sample_direct`], with `order` and `min_keep`
/// checked.
fn fast_filters(
    temperature: f64,
    top_k: i64,
    top_p: f64,
    min_p: f64,
    min_keep: i64,
    order: &str,
) -> PyResult<PerRow<Filters>> {
    let order = Order::parse(order).ok_or_else(|| {
        PyValueError::new_err(format!(
            "order: must be 'default', 'vllm' or 'llama.cpp', got {order:?}"
        ))
    })?;
    if min_keep < 1 {
        return Err(value_error(KernelError::param(
            "min_keep",
            None,
            format!("must be >= 1, got {min_keep}"),
        )));
    }
    Ok(PerRow::All(Filters {
        temperature,
        top_k,
        top_p,
        min_p,
        min_keep: usize::try_from(min_keep).unwrap_or(usize::MAX),
        order,
    }))
}

/// The bfloat16 dtype of `register_bfloat16` (a descriptor kept alive for good), or 0.
static BF16_DESCR: AtomicUsize = AtomicUsize::new(0);

/// Tells [`sample_direct`] which dtype object is bfloat16 (the Python layer recognises it by
/// name and calls this once).
#[pyfunction]
fn register_bfloat16(dtype: &Bound<'_, PyArrayDescr>) {
    if dtype.itemsize() == 2 {
        // The reference is never released, so the address stays this descriptor's.
        let ptr = dtype.clone().unbind().into_ptr() as usize;
        if BF16_DESCR
            .compare_exchange(0, ptr, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // SAFETY: the reference taken above, not stored; the GIL is held.
            unsafe { pyo3::ffi::Py_DECREF(ptr as *mut pyo3::ffi::PyObject) };
        }
    }
}

/// The element kind of an ndarray that `sample_direct` reads in place: 0 = float32, 1 = native
/// float16, 2 = the registered bfloat16; `None` for anything else.
fn direct_kind(arr: &Bound<'_, PyUntypedArray>) -> Option<u8> {
    let dt = arr.dtype();
    if dt.as_ptr() as usize == BF16_DESCR.load(Ordering::Acquire) {
        return Some(2);
    }
    if dt.is_native_byteorder() == Some(false) {
        return None;
    }
    match dt.num() {
        n if n == NPY_TYPES::NPY_FLOAT as i32 => Some(0),
        n if n == NPY_TYPES::NPY_HALF as i32 => Some(1),
        _ => None,
    }
}

/// `sample` in one call when its fast path applies, else `None` (the Python layer then takes
/// its own path): an exact float32, float16 or (registered) bfloat16 ndarray, C-contiguous and
/// aligned, of one or two dimensions and a non-empty last one; exact `float` temperature, top-p
/// and min-p; exact `int` top-k and min-keep (within int64) and step (within uint64); an exact
/// `str` order; a seed that is an exact `int` in `[0, 2**64)`, a 1-D uint64 ndarray, or `None` for a
/// greedy call. Returns the token (an `int`) of a 1-D row or the int64 array of a batch.
#[pyfunction]
#[pyo3(signature = (logits, temperature, top_k, top_p, min_p, min_keep, order, seed, step))]
#[allow(clippy::too_many_arguments)]
fn sample_direct<'py>(
    py: Python<'py>,
    logits: &Bound<'py, PyAny>,
    temperature: &Bound<'py, PyAny>,
    top_k: &Bound<'py, PyAny>,
    top_p: &Bound<'py, PyAny>,
    min_p: &Bound<'py, PyAny>,
    min_keep: &Bound<'py, PyAny>,
    order: &Bound<'py, PyAny>,
    seed: &Bound<'py, PyAny>,
    step: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let floats = [temperature, top_p, min_p];
    let ints = [top_k, min_keep, step];
    if !(floats.iter().all(|o| o.is_exact_instance_of::<PyFloat>())
        && ints.iter().all(|o| o.is_exact_instance_of::<PyInt>())
        && order.is_exact_instance_of::<PyString>())
    {
        return Ok(None);
    }
    let (Ok(top_k), Ok(min_keep), Ok(step)) = (
        top_k.extract::<i64>(),
        min_keep.extract::<i64>(),
        step.extract::<u64>(),
    ) else {
        return Ok(None);
    };
    let temperature: f64 = temperature.extract()?;
    // SAFETY: `logits` is a live object; the check reads its type pointer only.
    if unsafe { PyArray_CheckExact(py, logits.as_ptr()) } == 0 {
        return Ok(None);
    }
    // SAFETY: checked above to be an ndarray.
    let arr = unsafe { logits.cast_unchecked::<PyUntypedArray>() };
    let Some(kind) = direct_kind(arr) else {
        return Ok(None);
    };
    let shape = arr.shape();
    let aligned = NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED;
    // SAFETY: reads the flags of a live array object.
    let flags = unsafe { (*arr.as_array_ptr()).flags };
    if flags & aligned != aligned || !(1..=2).contains(&shape.len()) || shape[shape.len() - 1] == 0
    {
        return Ok(None);
    }
    let zero;
    let seed = if seed.is_none() {
        if temperature != 0.0 {
            return Ok(None); // fresh OS entropy: the Python layer draws it
        }
        // A greedy draw uses no uniform.
        zero = 0u64.into_pyobject(py)?.into_any();
        &zero
    } else if seed.is_exact_instance_of::<PyInt>() {
        if seed.extract::<u64>().is_err() {
            return Ok(None);
        }
        seed
    } else if seed.cast::<PyArray1<u64>>().is_ok()
        // SAFETY: `seed` is a live object; the check reads its type pointer only.
        && unsafe { PyArray_CheckExact(py, seed.as_ptr()) } != 0
    {
        seed
    } else {
        return Ok(None);
    };
    let order = order.cast::<PyString>()?.to_str()?;
    let filters = fast_filters(
        temperature,
        top_k,
        top_p.extract()?,
        min_p.extract()?,
        min_keep,
        order,
    )?;
    let vocab = shape[shape.len() - 1];
    let out = (shape.len() == 2).then(|| PyArray1::<i64>::zeros(py, shape[0], false));
    let out_any = out.as_ref().map(|o| o.as_any());
    let tok = if kind == 0 {
        // SAFETY: a float32 ndarray (`direct_kind`).
        let arr = unsafe { logits.cast_unchecked::<PyArray<f32, IxDyn>>() };
        let x = arr.try_readonly().map_err(|_| in_use("logits"))?;
        sample_fast_on(py, x.as_slice()?, vocab, &filters, seed, step, out_any)?
    } else {
        // SAFETY: 2-byte float16 or bfloat16 elements, read as their bits (every u16 is valid).
        let arr = unsafe { logits.cast_unchecked::<PyArray<u16, IxDyn>>() };
        let x = arr.try_readonly().map_err(|_| in_use("logits"))?;
        sample_fast_halves(
            py,
            x.as_slice()?,
            kind,
            vocab,
            &filters,
            seed,
            step,
            out_any,
        )?
    };
    match out {
        Some(o) => Ok(Some(o.into_any())),
        None => Ok(Some(tok.into_pyobject(py)?.into_any())),
    }
}

/// The body of [`sample_fast`] on the logits as a slice.
fn sample_fast_on<T: Elem>(
    py: Python<'_>,
    s: &[T],
    vocab: usize,
    filters: &PerRow<Filters>,
    seed: &Bound<'_, PyAny>,
    step: u64,
    out: Option<&Bound<'_, PyAny>>,
) -> PyResult<i64> {
    let out = out.map(|o| write::<i64, Ix1>(o, "out")).transpose()?;
    let rows = s.len().checked_div(vocab).unwrap_or(0);
    let u: Vec<f64> = match per_row_u64(seed, "seed", rows)? {
        PerRow::All(seed) => vec![philox::uniform(seed, step); rows],
        PerRow::Each(seeds) => seeds.iter().map(|&s| philox::uniform(s, step)).collect(),
    };
    match out {
        Some(mut o) => {
            let o = o.as_slice_mut()?;
            run(py, s.len(), || kernels::sample(s, vocab, filters, &u, o))?;
            Ok(0)
        }
        None => {
            let mut o = [0i64];
            run(py, s.len(), || {
                kernels::sample(s, vocab, filters, &u, &mut o)
            })?;
            Ok(o[0])
        }
    }
}

/// One uniform per row from per-row (or shared) seeds and steps.
#[pyfunction]
fn uniforms<'py>(
    py: Python<'py>,
    seed: &Bound<'py, PyAny>,
    step: &Bound<'py, PyAny>,
    rows: usize,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let seed = per_row_u64(seed, "seed", rows)?;
    let step = per_row_u64(step, "step", rows)?;
    let u: Vec<f64> = (0..rows)
        .map(|r| philox::uniform(*seed.get(r), *step.get(r)))
        .collect();
    Ok(PyArray1::from_vec(py, u))
}

#[pyfunction]
fn uniform(seed: u64, step: u64) -> f64 {
    philox::uniform(seed, step)
}

#[pyfunction]
fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    philox::philox4x32_10(ctr, key)
}

type LogprobArrays<'py> = (
    Bound<'py, PyArray1<f32>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<f32>>,
);

/// Flat results: token log-probs, ranks, row offsets into them, top ids, top log-probs.
#[pyfunction]
fn logprobs<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    kind: u8,
    tokens: &Bound<'py, PyAny>,
    one_row: bool,
    top_n: usize,
) -> PyResult<LogprobArrays<'py>> {
    let (rows, vocab) = {
        let shape: Vec<usize> = x.getattr("shape")?.extract()?;
        (shape[0], shape[1])
    };
    let toks = token_lists(Some(tokens), "tokens", rows, vocab, one_row)?;
    let mut res = vec![RowLogprobs::default(); rows];
    with_logits!(x, kind, |s, v| run(py, s.len(), || kernels::logprobs(
        s, v, &toks, top_n, &mut res
    )))?;
    let mut offsets = Vec::with_capacity(rows + 1);
    offsets.push(0i64);
    let (mut lp, mut rk, mut ti, mut tl) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in res {
        lp.extend(r.token_logprobs);
        rk.extend(r.ranks);
        ti.extend(r.top_ids);
        tl.extend(r.top_logprobs);
        offsets.push(lp.len() as i64);
    }
    Ok((
        PyArray1::from_vec(py, lp),
        PyArray1::from_vec(py, rk),
        PyArray1::from_vec(py, offsets),
        PyArray1::from_vec(py, ti),
        PyArray1::from_vec(py, tl),
    ))
}

/// The parsed, validated parameters of one request (built once per `SamplingParams`).
#[pyclass(frozen, module = "logitkit._core")]
struct RowParams {
    req: Request,
    seed: Option<u64>,
}

#[pymethods]
impl RowParams {
    #[new]
    #[pyo3(signature = (temperature, top_k, top_p, min_p, min_keep, order, repetition_penalty, presence_penalty, frequency_penalty, bias_ids, bias_values, allowed_token_ids, stop_token_ids, min_tokens, seed, logprobs, processed))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        temperature: f64,
        top_k: i64,
        top_p: f64,
        min_p: f64,
        min_keep: usize,
        order: &str,
        repetition_penalty: f64,
        presence_penalty: f64,
        frequency_penalty: f64,
        bias_ids: Vec<u32>,
        bias_values: Vec<f64>,
        allowed_token_ids: Option<Vec<u32>>,
        stop_token_ids: Vec<u32>,
        min_tokens: usize,
        seed: Option<u64>,
        logprobs: Option<usize>,
        processed: bool,
    ) -> PyResult<Self> {
        let order = Order::parse(order).ok_or_else(|| {
            PyValueError::new_err(format!(
                "order: must be 'default', 'vllm' or 'llama.cpp', got {order:?}"
            ))
        })?;
        let req = Request {
            filters: Filters {
                temperature,
                top_k,
                top_p,
                min_p,
                min_keep,
                order,
            },
            penalties: Penalties {
                repetition: repetition_penalty,
                presence: presence_penalty,
                frequency: frequency_penalty,
            },
            bias_ids,
            bias_values,
            allowed: allowed_token_ids,
            stop_ids: stop_token_ids,
            min_tokens,
            logprobs,
            processed,
        };
        req.filters.validate().map_err(value_error)?;
        kernels::check_penalties(&PerRow::All(req.penalties)).map_err(value_error)?;
        Ok(Self { req, seed })
    }
}

/// Tokens, then (when some row asked for log-probabilities) log-probs, ranks, top ids and top
/// log-probs (flat, `n` per row) and `n`.
type BatchArrays<'py> = (
    Bound<'py, PyArray1<i64>>,
    Option<(
        Bound<'py, PyArray1<f32>>,
        Bound<'py, PyArray1<i64>>,
        Bound<'py, PyArray1<i64>>,
        Bound<'py, PyArray1<f32>>,
        usize,
    )>,
);

/// `n` fresh 64-bit words of OS entropy (`os.urandom`).
fn os_entropy(py: Python<'_>, n: usize) -> PyResult<Vec<u64>> {
    let bytes = py.import("os")?.call_method1("urandom", (8 * n,))?;
    let bytes = bytes.cast::<pyo3::types::PyBytes>()?.as_bytes();
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

/// One step of a continuous-batching server. Returns the tokens and, when a row asked for them,
/// log-probs, ranks, top ids and top log-probs (flat, `n` per row, padded with -1 / -inf) and
/// `n`. Rows whose request has no seed draw fresh OS entropy.
#[pyfunction]
#[pyo3(signature = (x, kind, params, prompt_tokens, output_tokens, steps, bitmask))]
#[allow(clippy::too_many_arguments)]
fn sample_batch<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    kind: u8,
    params: Vec<Bound<'py, RowParams>>,
    prompt_tokens: Option<&Bound<'py, PyAny>>,
    output_tokens: Option<&Bound<'py, PyAny>>,
    steps: Option<&Bound<'py, PyAny>>,
    bitmask: Option<&Bound<'py, PyAny>>,
) -> PyResult<BatchArrays<'py>> {
    let bitmask = bitmask
        .map(|b| read::<i32, Ix2>(b, "token_bitmask"))
        .transpose()?;
    let shape: Vec<usize> = x.getattr("shape")?.extract()?;
    let (rows, vocab) = (shape[0], shape[1]);
    if params.len() != rows && params.len() != 1 {
        return Err(PyValueError::new_err(format!(
            "params: has {} entries for {rows} rows",
            params.len()
        )));
    }
    // Rows that share one SamplingParams object share its parsed request.
    let mut requests: Vec<&Request> = Vec::new();
    let mut seeds: Vec<Option<u64>> = Vec::new();
    let mut seen: Vec<*const RowParams> = Vec::new();
    let mut req_of = Vec::with_capacity(rows);
    for r in 0..rows {
        let p = params[if params.len() == 1 { 0 } else { r }].get();
        let ptr: *const RowParams = p;
        let idx = seen.iter().position(|&q| q == ptr).unwrap_or_else(|| {
            seen.push(ptr);
            requests.push(&p.req);
            seeds.push(p.seed);
            seen.len() - 1
        });
        req_of.push(idx);
    }
    let prompt = token_lists(prompt_tokens, "prompt_tokens", rows, vocab, false)?;
    let output = token_lists(output_tokens, "output_tokens", rows, vocab, false)?;
    let steps = steps.map(|s| per_row_u64(s, "steps", rows)).transpose()?;
    // Fresh entropy only for rows whose request has no seed.
    let entropy = if seeds.iter().any(Option::is_none) {
        os_entropy(py, rows)?
    } else {
        Vec::new()
    };
    let u: Vec<f64> = (0..rows)
        .map(|r| {
            let seed = seeds[req_of[r]].unwrap_or_else(|| entropy[r]);
            let step = steps
                .as_ref()
                .map_or(output.row(r).len() as u64, |s| *s.get(r));
            philox::uniform(seed, step)
        })
        .collect();
    let words = vocab.div_ceil(32);
    let mask_slice = match &bitmask {
        Some(b) => {
            if b.shape() != [rows, words] {
                return Err(PyValueError::new_err(format!(
                    "token_bitmask: must have shape ({rows}, {words}), got {:?}",
                    b.shape()
                )));
            }
            Some((b.as_slice()?, words))
        }
        None => None,
    };
    let mut res = vec![RowResult::default(); rows];
    with_logits!(x, kind, |s, v| run(py, s.len(), || kernels::sample_batch(
        s, v, &requests, &req_of, &prompt, &output, mask_slice, &u, &mut res
    )))?;
    let tokens = PyArray1::from_vec(py, res.iter().map(|r| r.token).collect());
    // A row lists at most V tokens, however many it asked for.
    let Some(n) = requests
        .iter()
        .filter_map(|r| r.logprobs.map(|n| n.min(vocab)))
        .max()
    else {
        return Ok((tokens, None));
    };
    let mut top_ids = vec![-1i64; rows * n];
    let mut top_lps = vec![f32::NEG_INFINITY; rows * n];
    for (r, rr) in res.iter().enumerate() {
        top_ids[r * n..r * n + rr.top_ids.len()].copy_from_slice(&rr.top_ids);
        top_lps[r * n..r * n + rr.top_logprobs.len()].copy_from_slice(&rr.top_logprobs);
    }
    Ok((
        tokens,
        Some((
            PyArray1::from_vec(py, res.iter().map(|r| r.logprob).collect()),
            PyArray1::from_vec(py, res.iter().map(|r| r.rank).collect()),
            PyArray1::from_vec(py, top_ids),
            PyArray1::from_vec(py, top_lps),
            n,
        )),
    ))
}

/// Benchmark floor: `sum(exp(x - maxes[r]))` of every float32 row (see
/// `kernels::exp_sum_floor`).
#[pyfunction]
fn exp_sum_floor<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    maxes: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let x = read::<f32, Ix2>(x, "x")?;
    let maxes = read::<f32, Ix1>(maxes, "maxes")?;
    let (rows, vocab) = (x.shape()[0], x.shape()[1]);
    if maxes.len() != rows || vocab == 0 {
        return Err(PyValueError::new_err(
            "maxes: must hold one value per row of a non-empty (B, V) array",
        ));
    }
    let (s, m) = (x.as_slice()?, maxes.as_slice()?);
    let mut out = vec![0.0f64; rows];
    py.detach(|| kernels::exp_sum_floor(s, vocab, m, &mut out));
    Ok(PyArray1::from_vec(py, out))
}

#[pyfunction]
fn simd_level() -> &'static str {
    simd::level().name()
}

#[pyfunction]
fn available_simd_levels() -> Vec<&'static str> {
    simd::available()
        .into_iter()
        .map(simd::Level::name)
        .collect()
}

#[pyfunction]
fn set_simd_level(name: &str) -> PyResult<()> {
    let level = simd::parse(name).ok_or_else(|| {
        PyValueError::new_err(format!(
            "level: must be 'scalar', 'avx2', 'avx512' or 'neon', got {name:?}"
        ))
    })?;
    if simd::set_level(level) {
        Ok(())
    } else {
        Err(PyValueError::new_err(format!(
            "level: this CPU does not support {name:?}"
        )))
    }
}

/// The variables of logitkit's environment that are set but that it cannot read, with their
/// values: they are ignored, as an empty one is (the Python layer warns about them). Read with
/// the parsers that the SIMD level and the thread pool use.
#[pyfunction]
fn unreadable_environment() -> Vec<(&'static str, String)> {
    let set = |name| {
        std::env::var_os(name)
            .map(|v| v.to_string_lossy().into_owned())
            .filter(|v| !v.trim().is_empty())
    };
    let level = set("LOGITKIT_SIMD").filter(|v| simd::parse(v).is_none());
    let threads =
        set("LOGITKIT_NUM_THREADS").filter(|v| kernels::parallel::threads_from(v).is_none());
    [("LOGITKIT_SIMD", level), ("LOGITKIT_NUM_THREADS", threads)]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
        .collect()
}

#[pyfunction]
fn set_num_threads(py: Python<'_>, n: usize) {
    // The pool's state lock is never awaited with the GIL held: a fork holds it across the
    // fork's Python hooks, which may hand the GIL to another thread.
    py.detach(|| kernels::parallel::set_num_threads(n));
}

#[pyfunction]
fn get_num_threads(py: Python<'_>) -> usize {
    py.detach(kernels::parallel::num_threads)
}

#[pyfunction]
fn _before_fork(py: Python<'_>) {
    // Waits for the state lock without the GIL: another thread may hold the lock for its own
    // fork and need the GIL to finish it (its later fork hooks run Python code).
    py.detach(kernels::parallel::before_fork);
}

#[pyfunction]
fn _after_fork_in_parent() {
    kernels::parallel::after_fork_in_parent();
}

#[pyfunction]
fn _after_fork_in_child() {
    kernels::parallel::forget_pool_after_fork();
}

#[pymodule(gil_used = false)]
#[pyo3(name = "_core")]
fn core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add(
        "build_profile",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    )?;
    m.add_function(wrap_pyfunction!(softmax, m)?)?;
    m.add_function(wrap_pyfunction!(argmax, m)?)?;
    m.add_function(wrap_pyfunction!(argmax_row, m)?)?;
    m.add_function(wrap_pyfunction!(argmax_rows, m)?)?;
    m.add_function(wrap_pyfunction!(softmax_new, m)?)?;
    m.add_function(wrap_pyfunction!(empty_f32, m)?)?;
    m.add_function(wrap_pyfunction!(top_k, m)?)?;
    m.add_function(wrap_pyfunction!(top_k_new, m)?)?;
    m.add_function(wrap_pyfunction!(mask, m)?)?;
    m.add_function(wrap_pyfunction!(mask_new, m)?)?;
    m.add_function(wrap_pyfunction!(bias_and_penalties, m)?)?;
    m.add_function(wrap_pyfunction!(sample, m)?)?;
    m.add_function(wrap_pyfunction!(uniforms, m)?)?;
    m.add_function(wrap_pyfunction!(sample_fast, m)?)?;
    m.add_function(wrap_pyfunction!(sample_direct, m)?)?;
    m.add_class::<RowParams>()?;
    m.add_function(wrap_pyfunction!(sample_batch, m)?)?;
    m.add_function(wrap_pyfunction!(uniform, m)?)?;
    m.add_function(wrap_pyfunction!(philox4x32_10, m)?)?;
    m.add_function(wrap_pyfunction!(logprobs, m)?)?;
    m.add_function(wrap_pyfunction!(exp_sum_floor, m)?)?;
    m.add_function(wrap_pyfunction!(simd_level, m)?)?;
    m.add_function(wrap_pyfunction!(register_bfloat16, m)?)?;
    m.add_function(wrap_pyfunction!(available_simd_levels, m)?)?;
    m.add_function(wrap_pyfunction!(set_simd_level, m)?)?;
    m.add("MAX_THREADS", kernels::parallel::MAX_THREADS)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(unreadable_environment, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(_before_fork, m)?)?;
    m.add_function(wrap_pyfunction!(_after_fork_in_parent, m)?)?;
    m.add_function(wrap_pyfunction!(_after_fork_in_child, m)?)?;
    Ok(())
}
