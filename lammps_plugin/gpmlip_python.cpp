/* Embedded-Python side of pair_style gpmlip: calls gpmlip.lammps.bridge, owns the GIL handling
   and turns every Python exception into a message for LAMMPS's error->one/all.

   Built as its own shared object with undefined Python symbols (no libpython link), so it binds
   to whichever interpreter the process already holds; see gpmlip_bridge.h. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "gpmlip_bridge.h"

#include <cstdio>
#include <cstring>
#include <string>

namespace {

void set_err(char *err, size_t n, const std::string &msg)
{
  if (n == 0) return;
  std::snprintf(err, n, "%s", msg.c_str());
}

// Message of the pending Python exception ("Type: text"), which is printed in full to stderr
// (traceback included) and then cleared.
std::string fetch_error()
{
  PyObject *type = nullptr, *value = nullptr, *tb = nullptr;
  PyErr_Fetch(&type, &value, &tb);
  if (type == nullptr) return "unknown Python error";
  PyErr_NormalizeException(&type, &value, &tb);
  std::string msg;
  PyObject *name = PyObject_GetAttrString(type, "__name__");
  if (name != nullptr && PyUnicode_Check(name)) msg = PyUnicode_AsUTF8(name);
  Py_XDECREF(name);
  PyObject *text = value ? PyObject_Str(value) : nullptr;
  if (text != nullptr && PyUnicode_Check(text)) {
    const char *s = PyUnicode_AsUTF8(text);
    if (s != nullptr && *s) msg += std::string(": ") + s;
  }
  Py_XDECREF(text);
  PyErr_Clear();
  PyErr_Restore(type, value, tb);
  PyErr_Print();    // full traceback on stderr for the user; clears the error
  for (auto &c : msg)
    if (c == '\n') c = ' ';
  return msg;
}

PyObject *memview(const void *data, int64_t n_bytes, int flags)
{
  static char empty[8];
  char *p = n_bytes > 0 ? (char *) data : empty;
  return PyMemoryView_FromMemory(p, (Py_ssize_t) n_bytes, flags);
}

class GIL {
 public:
  GIL() : state(PyGILState_Ensure()) {}
  ~GIL() { PyGILState_Release(state); }

 private:
  PyGILState_STATE state;
};

}    // namespace

extern "C" {

int gpmlip_bridge_init(const char *python_exe, char *err, size_t errlen)
{
  // Py_GetVersion is "3.11.7 (main, ...)": the running Python must be the one compiled for.
  const std::string want =
      std::to_string(PY_MAJOR_VERSION) + "." + std::to_string(PY_MINOR_VERSION) + ".";
  if (std::strncmp(Py_GetVersion(), want.c_str(), want.size()) != 0) {
    set_err(err, errlen, std::string("the plugin was built for Python ") + PY_VERSION +
                             " but this process runs Python " + Py_GetVersion() +
                             "; rebuild it with `gpmlip lammps build` in that environment");
    return 1;
  }
  if (Py_IsInitialized()) return 0;
  PyConfig config;
  PyConfig_InitPythonConfig(&config);
  config.install_signal_handlers = 0;    // leave SIGINT to LAMMPS/MPI
  config.parse_argv = 0;
  PyStatus status = PyConfig_SetBytesString(&config, &config.program_name, python_exe);
  if (!PyStatus_Exception(status)) status = Py_InitializeFromConfig(&config);
  PyConfig_Clear(&config);
  if (PyStatus_Exception(status)) {
    set_err(err, errlen, std::string("could not start Python ") + python_exe + ": " +
                             (status.err_msg ? status.err_msg : "unknown error"));
    return 1;
  }
  PyEval_SaveThread();    // release the GIL; every call below takes it with PyGILState_Ensure
  return 0;
}

int gpmlip_bridge_load(const char *spec, void **model, double *cutoff, char *err, size_t errlen)
{
  GIL gil;
  *model = nullptr;
  PyObject *mod = PyImport_ImportModule("gpmlip.lammps.bridge");
  if (mod == nullptr) {
    set_err(err, errlen, "cannot import gpmlip.lammps.bridge: " + fetch_error());
    return 1;
  }
  PyObject *obj = PyObject_CallMethod(mod, "load", "s", spec);
  Py_DECREF(mod);
  if (obj == nullptr) {
    set_err(err, errlen, fetch_error());
    return 1;
  }
  PyObject *cut = PyObject_GetAttrString(obj, "cutoff");
  double value = cut ? PyFloat_AsDouble(cut) : -1.0;
  Py_XDECREF(cut);
  if (PyErr_Occurred()) {
    set_err(err, errlen, "model cutoff: " + fetch_error());
    Py_DECREF(obj);
    return 1;
  }
  *cutoff = value;
  *model = obj;
  return 0;
}

int gpmlip_bridge_species(void *model, int n, const char *const *symbols, int64_t *numbers,
                          char *err, size_t errlen)
{
  GIL gil;
  PyObject *list = PyList_New(n);
  for (int k = 0; k < n; ++k) PyList_SET_ITEM(list, k, PyUnicode_FromString(symbols[k]));
  PyObject *out = PyObject_CallMethod((PyObject *) model, "numbers", "O", list);
  Py_DECREF(list);
  if (out == nullptr) {
    set_err(err, errlen, fetch_error());
    return 1;
  }
  PyObject *seq = PySequence_Fast(out, "numbers() must return a sequence");
  Py_DECREF(out);
  if (seq == nullptr || PySequence_Fast_GET_SIZE(seq) != n) {
    set_err(err, errlen, seq ? "numbers() returned the wrong count" : fetch_error());
    Py_XDECREF(seq);
    return 1;
  }
  for (int k = 0; k < n; ++k) numbers[k] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, k));
  Py_DECREF(seq);
  if (PyErr_Occurred()) {
    set_err(err, errlen, fetch_error());
    return 1;
  }
  return 0;
}

int gpmlip_bridge_compute(void *model, int64_t n_centres, int64_t n_pairs,
                          const int64_t *centre_numbers, const int64_t *i, const int64_t *j,
                          const double *r_ij, const int64_t *neighbour_numbers,
                          double *energies, double *dE_dr, double *std,
                          double *model_seconds, char *err, size_t errlen)
{
  GIL gil;
  const int64_t b = 8;
  PyObject *args[8] = {
      memview(centre_numbers, b * n_centres, PyBUF_READ),
      memview(i, b * n_pairs, PyBUF_READ),
      memview(j, b * n_pairs, PyBUF_READ),
      memview(r_ij, 3 * b * n_pairs, PyBUF_READ),
      memview(neighbour_numbers, b * n_pairs, PyBUF_READ),
      memview(energies, b * n_centres, PyBUF_WRITE),
      memview(dE_dr, 3 * b * n_pairs, PyBUF_WRITE),
      std ? memview(std, b * n_centres, PyBUF_WRITE) : (Py_INCREF(Py_None), Py_None)};
  PyObject *out = PyObject_CallMethod((PyObject *) model, "compute", "OOOOOOOO", args[0],
                                      args[1], args[2], args[3], args[4], args[5], args[6],
                                      args[7]);
  std::string failure = out == nullptr ? fetch_error() : "";
  *model_seconds = out != nullptr && PyFloat_Check(out) ? PyFloat_AsDouble(out) : 0.0;
  Py_XDECREF(out);
  // views of LAMMPS memory must not outlive this call
  for (auto *a : args) {
    if (PyMemoryView_Check(a)) {
      PyObject *r = PyObject_CallMethod(a, "release", nullptr);
      if (r == nullptr && failure.empty())
        failure = "the model kept a view of LAMMPS's arrays: " + fetch_error();
      PyErr_Clear();
      Py_XDECREF(r);
    }
    Py_DECREF(a);
  }
  if (!failure.empty()) {
    set_err(err, errlen, failure);
    return 1;
  }
  return 0;
}

void gpmlip_bridge_release(void *model)
{
  if (model == nullptr || !Py_IsInitialized()) return;
  GIL gil;
  Py_DECREF((PyObject *) model);
}
}
