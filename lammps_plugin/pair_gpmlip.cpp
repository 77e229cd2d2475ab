/* pair_style gpmlip: hands LAMMPS's full neighbour list to gpmlip's pair-list entry point
   (model.pair_energies through gpmlip.lammps.bridge) and applies what comes back:

     F_i += dE/dr_ij,  F_j -= dE/dr_ij   (j may be a ghost: newton_pair on reverse-communicates)
     E = sum_i E_i,    W = -sum_p r_ij (x) dE/dr_ij  (via virial_fdotr_compute)

   The Python side is reached through a second shared object (gpmlip_python.so) loaded only
   once Python is in the process, so this plugin itself carries no Python symbols. */

#include "pair_gpmlip.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "platform.h"
#include "update.h"

#include "gpmlip_bridge.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <sys/resource.h>

#ifndef GPMLIP_LIBPYTHON
#define GPMLIP_LIBPYTHON "libpython3.so"
#endif
#ifndef GPMLIP_PYTHON_EXE
#define GPMLIP_PYTHON_EXE "python3"
#endif

using namespace LAMMPS_NS;

namespace {

const size_t ERRLEN = 4096;

struct Bridge {
  gpmlip_init_fn init = nullptr;
  gpmlip_load_fn load = nullptr;
  gpmlip_species_fn species = nullptr;
  gpmlip_compute_fn compute = nullptr;
  gpmlip_release_fn release = nullptr;
};

const char *env_or(const char *name, const char *fallback)
{
  const char *v = std::getenv(name);
  return (v != nullptr && *v) ? v : fallback;
}

// The bridge is opened once per process; every failure is a LAMMPS error on all ranks.
Bridge &bridge(Error *error)
{
  static Bridge b;
  if (b.compute != nullptr) return b;

  // 1. Python: the host's (LAMMPS inside a Python process), else the recorded libpython.
  if (dlsym(RTLD_DEFAULT, "Py_IsInitialized") == nullptr) {
    const char *lib = env_or("GPMLIP_LIBPYTHON", GPMLIP_LIBPYTHON);
    if (dlopen(lib, RTLD_NOW | RTLD_GLOBAL) == nullptr)
      error->all(FLERR, "pair_style gpmlip: cannot load Python library {}: {}", lib, dlerror());
  }

  // 2. gpmlip_python.so, next to this plugin file.
  Dl_info info;
  if (dladdr((void *) &bridge, &info) == 0 || info.dli_fname == nullptr)
    error->all(FLERR, "pair_style gpmlip: cannot locate the plugin file");
  std::string path = info.dli_fname;
  path = path.substr(0, path.find_last_of('/') + 1) + "gpmlip_python.so";
  void *dso = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (dso == nullptr)
    error->all(FLERR, "pair_style gpmlip: cannot load {}: {} (run `gpmlip lammps build`)", path,
               dlerror());
  Bridge found;
  found.init = (gpmlip_init_fn) dlsym(dso, "gpmlip_bridge_init");
  found.load = (gpmlip_load_fn) dlsym(dso, "gpmlip_bridge_load");
  found.species = (gpmlip_species_fn) dlsym(dso, "gpmlip_bridge_species");
  found.compute = (gpmlip_compute_fn) dlsym(dso, "gpmlip_bridge_compute");
  found.release = (gpmlip_release_fn) dlsym(dso, "gpmlip_bridge_release");
  if (!found.init || !found.load || !found.species || !found.compute || !found.release)
    error->all(FLERR, "pair_style gpmlip: {} lacks bridge functions (rebuild the plugin)", path);

  char err[ERRLEN] = "";
  if (found.init(env_or("GPMLIP_PYTHON", GPMLIP_PYTHON_EXE), err, ERRLEN) != 0)
    error->all(FLERR, "pair_style gpmlip: {}", err);
  b = found;
  return b;
}

}    // namespace

/* ---------------------------------------------------------------------- */

PairGpmlip::PairGpmlip(LAMMPS *lmp) : Pair(lmp)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  centroidstressflag = CENTROID_NOTAVAIL;
}

PairGpmlip::~PairGpmlip()
{
  if (model != nullptr) bridge(error).release(model);
  memory->destroy(std_atom);
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
  }
}

void PairGpmlip::allocate()
{
  allocated = 1;
  int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  memory->create(cutsq, n, n, "pair:cutsq");
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) setflag[i][j] = 0;
}

/* pair_style gpmlip MODEL [std yes|no] */

void PairGpmlip::settings(int narg, char **arg)
{
  if (narg < 1) error->all(FLERR, "pair_style gpmlip needs a model file: pair_style gpmlip MODEL");
  int iarg = 1;
  std_always = 0;
  while (iarg < narg) {
    if (strcmp(arg[iarg], "std") == 0 && iarg + 1 < narg) {
      std_always = utils::logical(FLERR, arg[iarg + 1], false, lmp);
      iarg += 2;
    } else
      error->all(FLERR, "pair_style gpmlip: unknown argument {} (expected: MODEL [std yes|no])",
                 arg[iarg]);
  }
  Bridge &b = bridge(error);
  if (model != nullptr) b.release(model);
  model = nullptr;
  model_spec = arg[0];
  char err[ERRLEN] = "";
  if (b.load(arg[0], &model, &cutoff, err, ERRLEN) != 0)
    error->all(FLERR, "pair_style gpmlip: cannot load model {}: {}", arg[0], err);
  if (!(cutoff > 0.0) || !std::isfinite(cutoff))
    error->all(FLERR, "pair_style gpmlip: model {} has no positive pair cutoff ({})", arg[0],
               cutoff);
  if (!elements.empty()) map_species();
}

/* pair_coeff * * El1 El2 ... : one element per atom type */

void PairGpmlip::coeff(int narg, char **arg)
{
  if (!allocated) allocate();
  int ntypes = atom->ntypes;
  if (narg < 2 || strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair_coeff for gpmlip must be: pair_coeff * * El1 ... El{}", ntypes);
  if (narg - 2 != ntypes)
    error->all(FLERR,
               "pair_coeff * * for gpmlip needs one element per atom type: {} atom types, {} "
               "elements given",
               ntypes, narg - 2);
  elements.assign(arg + 2, arg + narg);
  map_species();
  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++) setflag[i][j] = 1;
}

void PairGpmlip::map_species()
{
  std::vector<const char *> sym;
  for (auto &e : elements) sym.push_back(e.c_str());
  std::vector<int64_t> z(sym.size());
  char err[ERRLEN] = "";
  if (bridge(error).species(model, (int) sym.size(), sym.data(), z.data(), err, ERRLEN) != 0)
    error->all(FLERR, "pair_coeff for gpmlip: {}", err);
  type_number.assign(1, 0);
  type_number.insert(type_number.end(), z.begin(), z.end());
}

void PairGpmlip::init_style()
{
  if (model == nullptr) error->all(FLERR, "pair_style gpmlip has no model");
  if (force->newton_pair == 0) error->all(FLERR, "pair_style gpmlip requires newton pair on");
  if (strcmp(update->unit_style, "metal") != 0)
    error->all(FLERR, "pair_style gpmlip requires 'units metal' (eV, Angstrom), not '{}'",
               update->unit_style);
  if ((int) type_number.size() != atom->ntypes + 1)
    error->all(FLERR, "pair_coeff * * for gpmlip must name one element for each of the {} "
                      "atom types", atom->ntypes);
  neighbor->add_request(this, NeighConst::REQ_FULL);
}

double PairGpmlip::init_one(int i, int j)
{
  if (setflag[i][j] == 0)
    error->all(FLERR, "pair_style gpmlip: atom types {} and {} have no element "
                      "(pair_coeff * * El1 ... El{})", i, j, atom->ntypes);
  return cutoff;
}

/* ---------------------------------------------------------------------- */

void PairGpmlip::gather_pairs()
{
  double **x = atom->x;
  int *type = atom->type;
  int inum = list->inum;
  double cut2 = cutoff * cutoff;

  centre_numbers.resize(inum);
  centre_atom.resize(inum);
  pair_i.clear();
  pair_j.clear();
  neighbour_numbers.clear();
  r_ij.clear();
  for (int ii = 0; ii < inum; ii++) {
    int i = list->ilist[ii];
    centre_atom[ii] = i;
    centre_numbers[ii] = type_number[type[i]];
    int *jlist = list->firstneigh[i];
    for (int jj = 0; jj < list->numneigh[i]; jj++) {
      int j = jlist[jj] & NEIGHMASK;
      double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
      if (dx * dx + dy * dy + dz * dz >= cut2) continue;
      pair_i.push_back(ii);
      pair_j.push_back(j);
      neighbour_numbers.push_back(type_number[type[j]]);
      r_ij.insert(r_ij.end(), {dx, dy, dz});
    }
  }
}

void PairGpmlip::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  double t0 = platform::walltime();
  bool want_std = std_always || std_flag;
  if (want_std && atom->nmax > nmax_std) {
    nmax_std = atom->nmax;
    memory->destroy(std_atom);
    memory->create(std_atom, nmax_std, "pair:gpmlip:std");
  }

  gather_pairs();
  int64_t n_centres = (int64_t) centre_numbers.size(), n_pairs = (int64_t) pair_i.size();
  energies.assign(n_centres, 0.0);
  dE_dr.assign(3 * n_pairs, 0.0);
  std_centre.assign(want_std ? n_centres : 0, 0.0);
  if (n_centres > 0) {
    char err[ERRLEN] = "";
    double tm = platform::walltime(), inside = 0.0;
    int rc = bridge(error).compute(model, n_centres, n_pairs, centre_numbers.data(),
                                   pair_i.data(), pair_j.data(), r_ij.data(),
                                   neighbour_numbers.data(), energies.data(), dE_dr.data(),
                                   want_std ? std_centre.data() : nullptr, &inside, err, ERRLEN);
    time_bridge += platform::walltime() - tm;
    time_model += inside;
    if (rc != 0) error->one(FLERR, "pair_style gpmlip: the model failed: {}", err);
  }
  scatter_results(want_std);
  if (vflag_fdotr) virial_fdotr_compute();
  time_total += platform::walltime() - t0;
  ++n_calls;
}

void PairGpmlip::scatter_results(bool want_std)
{
  double **f = atom->f;
  int64_t n_centres = (int64_t) centre_numbers.size(), n_pairs = (int64_t) pair_i.size();
  for (int64_t c = 0; c < n_centres; c++) {
    double e = energies[c];
    if (!std::isfinite(e))
      error->one(FLERR, "pair_style gpmlip: the model returned a non-finite energy ({}) for "
                        "atom {}", e, atom->tag[centre_atom[c]]);
    if (eflag_global) eng_vdwl += e;
    if (eflag_atom) eatom[centre_atom[c]] += e;
    if (want_std) std_atom[centre_atom[c]] = std_centre[c];
  }
  for (int64_t p = 0; p < n_pairs; p++) {
    int i = centre_atom[pair_i[p]], j = (int) pair_j[p];
    const double *d = &dE_dr[3 * p];
    if (!std::isfinite(d[0]) || !std::isfinite(d[1]) || !std::isfinite(d[2]))
      error->one(FLERR, "pair_style gpmlip: the model returned a non-finite force for atom {}",
                 atom->tag[i]);
    for (int k = 0; k < 3; k++) {
      f[i][k] += d[k];
      f[j][k] -= d[k];
    }
    if (vflag_atom) {
      // the pair's virial -r_ij (x) dE/dr_ij, half to each atom (Voigt: xx yy zz xy xz yz)
      const double *r = &r_ij[3 * p];
      double w[6] = {-r[0] * d[0], -r[1] * d[1], -r[2] * d[2],
                     -r[0] * d[1], -r[0] * d[2], -r[1] * d[2]};
      for (int k = 0; k < 6; k++) {
        vatom[i][k] += 0.5 * w[k];
        vatom[j][k] += 0.5 * w[k];
      }
    }
  }
}

/* ---------------------------------------------------------------------- */

void PairGpmlip::finish()
{
  // timings summed over ranks; peak resident memory (LAMMPS + Python + model) of the worst rank
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  double local[3] = {time_total, time_bridge, time_model}, sum[3] = {0.0, 0.0, 0.0};
  double rss = usage.ru_maxrss / 1024.0, rss_max = 0.0;    // MiB (ru_maxrss is in KiB)
  MPI_Allreduce(local, sum, 3, MPI_DOUBLE, MPI_SUM, world);
  MPI_Allreduce(&rss, &rss_max, 1, MPI_DOUBLE, MPI_MAX, world);
  if (comm->me == 0 && n_calls > 0) {
    double outside = sum[0] - sum[2];
    utils::logmesg(lmp,
                   "pair_style gpmlip: {} force calls, {:.6g} s in the pair style, {:.6g} s in "
                   "the Python bridge call, {:.6g} s in the model's pair_energies, {:.6g} s "
                   "outside the model ({:.3g}%), summed over {} ranks; peak memory {:.1f} MiB "
                   "per rank (max)\n",
                   n_calls, sum[0], sum[1], sum[2], outside,
                   sum[0] > 0 ? 100.0 * outside / sum[0] : 0.0, comm->nprocs, rss_max);
  }
}

void *PairGpmlip::extract(const char *name, int &dim)
{
  dim = 0;
  if (strcmp(name, "std_flag") == 0) return (void *) &std_flag;
  if (strcmp(name, "cutoff") == 0) return (void *) &cutoff;
  return nullptr;
}

void *PairGpmlip::extract_peratom(const char *name, int &ncol)
{
  ncol = 0;
  if (strcmp(name, "std") == 0) {
    // fix pair reads nlocal values: make sure the array exists before the first trigger
    if (atom->nmax > nmax_std) {
      nmax_std = atom->nmax;
      memory->destroy(std_atom);
      memory->create(std_atom, nmax_std, "pair:gpmlip:std");
      for (int i = 0; i < nmax_std; i++) std_atom[i] = 0.0;
    }
    return (void *) std_atom;
  }
  return nullptr;
}

double PairGpmlip::memory_usage()
{
  double bytes = Pair::memory_usage();
  bytes += (double) nmax_std * sizeof(double);
  bytes += (double) r_ij.capacity() * sizeof(double) + dE_dr.capacity() * sizeof(double);
  bytes += (double) (pair_i.capacity() + pair_j.capacity() + neighbour_numbers.capacity()) *
      sizeof(int64_t);
  return bytes;
}
