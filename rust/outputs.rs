//! New float32 output arrays for the extension module, with the memory of large ones reused.
//!
//! A fresh allocation of 32 MiB or more comes from new pages of the operating system (glibc
//! serves it with `mmap` and unmaps it on free), and the first write of every page costs a page
//! fault and its zeroing: for a `(64, 262144)` softmax, about as long as the softmax itself. An
//! output of [`REUSE_MIN_BYTES`] or more is therefore made on a buffer owned by an opaque
//! [`OutputBuffer`] (the array's base object, which exposes nothing; the memory is a 1-D NumPy
//! array that nothing else references): when the last array on it is freed, the buffer goes
//! back to a small pool ([`REUSE_SLOTS`] buffers of at most [`REUSE_MAX_BYTES`]), and the next
//! output that fits takes it. A buffer is only ever in the pool or under live arrays, never
//! both.

use std::sync::{Mutex, OnceLock};

use numpy::ndarray::IxDyn;
use numpy::npyffi::{self, npy_intp, NPY_ARRAY_WRITEABLE, PY_ARRAY_API};
use numpy::{Element, PyArray, PyArray1, PyArrayDescrMethods, PyArrayMethods};
use pyo3::exceptions::PyMemoryError;
use pyo3::prelude::*;

/// Outputs of at least this many bytes use reusable buffers.
pub const REUSE_MIN_BYTES: usize = 16 << 20;

/// Freed buffers kept at most.
const REUSE_SLOTS: usize = 2;

/// Larger freed buffers are returned to the system instead of kept.
const REUSE_MAX_BYTES: usize = 256 << 20;

/// A 1-D float32 array that only logitkit references (NumPy allocated its memory, with its usual
/// huge-page advice), and its length.
struct Buffer {
    array: Py<PyArray1<f32>>,
    len: usize,
}

/// Freed buffers, newest last.
static REUSABLE: Mutex<Vec<Buffer>> = Mutex::new(Vec::new());

/// Whether large outputs reuse freed memory (`LOGITKIT_REUSE_OUTPUTS=0` turns it off).
fn reuse_outputs() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("LOGITKIT_REUSE_OUTPUTS").map_or(true, |v| v.trim() != "0"))
}

/// A freed buffer for `len` values (at least `len`, at most twice as many; the smallest, the
/// newest among equals), or a new one. `try_lock`: a lock held across a `fork` (in the child)
/// never blocks, the call allocates instead.
fn take(py: Python<'_>, len: usize) -> PyResult<Buffer> {
    if let Ok(mut pool) = REUSABLE.try_lock() {
        let fit = (0..pool.len())
            .rev()
            .filter(|&i| pool[i].len >= len && pool[i].len / 2 <= len)
            .min_by_key(|&i| pool[i].len);
        if let Some(i) = fit {
            return Ok(pool.remove(i));
        }
    }
    // SAFETY: NumPy allocates.
    let array = unsafe { f32_array(py, &[len], std::ptr::null_mut(), None) }?;
    // SAFETY: created as a 1-D float32 array.
    let array = unsafe { array.cast_into_unchecked::<PyArray1<f32>>() };
    Ok(Buffer {
        array: array.unbind(),
        len,
    })
}

/// Puts a buffer whose arrays are all freed back in the pool (the oldest one leaves when it is
/// full), or frees it.
fn give_back(buf: Buffer) {
    if buf.len.saturating_mul(4) > REUSE_MAX_BYTES {
        return;
    }
    let evicted = match REUSABLE.try_lock() {
        Ok(mut pool) => {
            let old = (pool.len() >= REUSE_SLOTS).then(|| pool.remove(0));
            pool.push(buf);
            old
        }
        Err(_) => Some(buf),
    };
    drop(evicted); // freed outside the lock
}

/// The base object of a large output: holds the buffer and exposes nothing (no memory, no
/// attributes, no weak references). When it is freed, so is every array on it, and the buffer
/// goes back to the pool.
#[pyclass(frozen, module = "logitkit._core")]
pub struct OutputBuffer {
    buf: Option<Buffer>,
}

impl Drop for OutputBuffer {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            give_back(buf);
        }
    }
}

/// A new C-contiguous float32 array of shape `dims`: on `data` with `base` as its base object,
/// or (`data` null) in memory that NumPy allocates. A failed allocation is `MemoryError`.
///
/// # Safety
/// A non-null `data` holds the product of `dims` float32 values and stays valid while `base`
/// lives.
unsafe fn f32_array<'py>(
    py: Python<'py>,
    dims: &[usize],
    data: *mut f32,
    base: Option<Bound<'py, OutputBuffer>>,
) -> PyResult<Bound<'py, PyArray<f32, IxDyn>>> {
    let mut shape: Vec<npy_intp> = dims.iter().map(|&n| n as npy_intp).collect();
    let flags = if data.is_null() {
        0
    } else {
        NPY_ARRAY_WRITEABLE
    };
    // SAFETY: the type object and descriptor are NumPy's own (the descriptor reference is
    // stolen); `shape` holds `dims.len()` sizes; `data` is null or as the caller promises.
    let ptr = unsafe {
        PY_ARRAY_API.PyArray_NewFromDescr(
            py,
            npyffi::get_type_object(py, npyffi::NpyTypes::PyArray_Type),
            f32::get_dtype(py).into_dtype_ptr(),
            shape.len() as std::os::raw::c_int,
            shape.as_mut_ptr(),
            std::ptr::null_mut(),
            data.cast(),
            flags,
            std::ptr::null_mut(),
        )
    };
    if ptr.is_null() {
        return Err(PyErr::take(py).unwrap_or_else(|| PyMemoryError::new_err("out of memory")));
    }
    // SAFETY: a new reference to an array object.
    let arr = unsafe { Bound::from_owned_ptr(py, ptr) };
    if let Some(b) = base {
        // SAFETY: `ptr` is the new array; the base reference is stolen (also on failure).
        if unsafe { PY_ARRAY_API.PyArray_SetBaseObject(py, ptr.cast(), b.into_ptr()) } < 0 {
            return Err(PyErr::fetch(py));
        }
    }
    // SAFETY: created above as a float32 array of `dims.len()` dimensions.
    Ok(unsafe { arr.cast_into_unchecked() })
}

/// A new C-contiguous float32 array of shape `dims`, its contents unspecified (the caller
/// writes every element before Python sees it); see the module's documentation for the memory
/// of large ones. A failed allocation is `MemoryError`.
pub fn new_output<'py>(
    py: Python<'py>,
    dims: &[usize],
) -> PyResult<Bound<'py, PyArray<f32, IxDyn>>> {
    let len = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let Some(len) = len.filter(|&n| n.saturating_mul(4) >= REUSE_MIN_BYTES && reuse_outputs())
    else {
        // SAFETY: NumPy allocates.
        return unsafe { f32_array(py, dims, std::ptr::null_mut(), None) };
    };
    let buf = take(py, len)?;
    let data = buf.array.bind(py).data();
    let base = Bound::new(py, OutputBuffer { buf: Some(buf) })?;
    // SAFETY: `data` holds at least `len` values, owned by `base` until it is dropped (which
    // the array's reference to it prevents while the array lives).
    unsafe { f32_array(py, dims, data, Some(base)) }
}

/// `new_output(shape)` for the Python layer.
#[pyfunction]
pub fn empty_f32<'py>(
    py: Python<'py>,
    shape: Vec<usize>,
) -> PyResult<Bound<'py, PyArray<f32, IxDyn>>> {
    new_output(py, &shape)
}
