//! The memory of a Python `ctypes` array as bytes (feature `python`).
//!
//! PyO3 has no buffer protocol under the 3.9 limited API, so the Python package exports a
//! caller's buffer as a ctypes array (`(ctypes.c_char * n).from_buffer(view)`, which also stops
//! the buffer's owner from resizing it while the array lives) and hands the native side the
//! array itself. [`CtypesBytes::borrow`] checks that it is one and asks ctypes for its address
//! (`ctypes.addressof`) and size (`ctypes.sizeof`), which ctypes reads from the array object
//! itself: no integer a caller passes ever becomes an address.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

/// The bytes of a live ctypes array, borrowed for as long as this value lives (it holds a
/// reference to the array, so the array and its memory live at least that long).
pub struct CtypesBytes<'py> {
    array: Bound<'py, PyAny>,
    address: usize,
    len: usize,
}

impl<'py> CtypesBytes<'py> {
    /// Borrow the memory of `array`, which must be an instance of `ctypes.Array` (a `TypeError`
    /// otherwise).
    pub fn borrow(array: &Bound<'py, PyAny>) -> PyResult<CtypesBytes<'py>> {
        let py = array.py();
        static ARRAY: PyOnceLock<Py<PyType>> = PyOnceLock::new();
        static ADDRESSOF: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        static SIZEOF: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let array_type = ARRAY.import(py, "ctypes", "Array")?;
        // The object's real type (not `__class__`, which `isinstance` would also consult).
        if !array.get_type().is_subclass(array_type)? {
            return Err(PyTypeError::new_err(format!(
                "expected a ctypes array, not {}",
                array.get_type().name()?
            )));
        }
        let address: usize = ADDRESSOF
            .import(py, "ctypes", "addressof")?
            .call1((array,))?
            .extract()?;
        let len: usize = SIZEOF
            .import(py, "ctypes", "sizeof")?
            .call1((array,))?
            .extract()?;
        if len > 0 && address == 0 {
            return Err(PyValueError::new_err("null buffer address"));
        }
        if len > isize::MAX as usize {
            return Err(PyValueError::new_err("ctypes array too large"));
        }
        Ok(CtypesBytes {
            array: array.clone(),
            address,
            len,
        })
    }

    /// Bytes in the array.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The array this borrows.
    pub fn array(&self) -> &Bound<'py, PyAny> {
        &self.array
    }

    /// The array's bytes. The slice is `Send`, so it can be written with the GIL released.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: `address` and `len` are what ctypes reports for a real ctypes array (type
        // checked above; `addressof` and `sizeof` read the C object, which Python code cannot
        // override), and `self` holds a strong reference to that array, so its memory (its own
        // allocation, or a buffer it keeps exported and, for `from_buffer`, unresizable) stays
        // valid for the borrow; `len <= isize::MAX` and the address is not null (checked).
        // Every byte of a ctypes array is initialised (owned arrays are zeroed; exported ones
        // are the exporter's initialised memory). `&mut self` makes this the only slice of
        // this borrow. What Python leaves unchecked stays unchecked (see the crate
        // documentation): an array made with `from_address`, the same memory borrowed twice
        // (two arrays over one buffer), or other Python threads resizing or writing it while
        // the GIL is released; the native module borrows one array per call, which the Python
        // layer makes for that call alone.
        unsafe { std::slice::from_raw_parts_mut(self.address as *mut u8, self.len) }
    }
}

impl std::fmt::Debug for CtypesBytes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CtypesBytes")
            .field("len", &self.len)
            .finish()
    }
}
