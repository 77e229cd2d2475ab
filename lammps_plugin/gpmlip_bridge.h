/* The C interface between the LAMMPS pair style (gpmlip_pair.cpp, no Python symbols) and the
   embedded-Python bridge (gpmlip_python.cpp, compiled against Python.h).

   The pair style loads the bridge with dlopen only after Python is in the process (the host's
   own interpreter, or libpython loaded with RTLD_GLOBAL), so one plugin file works both inside
   a Python process and from the standalone lmp binary.  Every function returns 0 on success and
   otherwise writes a one-line message into err (errlen bytes) and returns non-zero; none of them
   throws or lets a Python exception escape. */

#ifndef GPMLIP_BRIDGE_H
#define GPMLIP_BRIDGE_H

#include <cstddef>
#include <cstdint>

extern "C" {

/* Start Python if the process has none (program name python_exe, so the interpreter finds its
   virtual environment's site-packages) and leave the GIL released. */
typedef int (*gpmlip_init_fn)(const char *python_exe, char *err, size_t errlen);

/* model = gpmlip.lammps.bridge.load(spec); *cutoff = its pair cutoff in Angstrom. */
typedef int (*gpmlip_load_fn)(const char *spec, void **model, double *cutoff, char *err,
                              size_t errlen);

/* Atomic numbers of the element symbols of pair_coeff, checked against the model's species. */
typedef int (*gpmlip_species_fn)(void *model, int n, const char *const *symbols,
                                 int64_t *numbers, char *err, size_t errlen);

/* energies[n_centres], dE_dr[3 * n_pairs] and (if std is not null) std[n_centres] from the
   model's pair_energies on one rank's pairs; *model_seconds = wall time inside pair_energies. */
typedef int (*gpmlip_compute_fn)(void *model, int64_t n_centres, int64_t n_pairs,
                                 const int64_t *centre_numbers, const int64_t *i,
                                 const int64_t *j, const double *r_ij,
                                 const int64_t *neighbour_numbers, double *energies,
                                 double *dE_dr, double *std, double *model_seconds, char *err,
                                 size_t errlen);

/* Drop the model. */
typedef void (*gpmlip_release_fn)(void *model);
}

#endif
