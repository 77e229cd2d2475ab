/* pair_style gpmlip: a gpmlip Gaussian-process potential evaluated by embedded Python.

   pair_style gpmlip MODEL [std yes|no]
   pair_coeff * * El1 El2 ...        (one element per atom type, each a species of the model)

   Per-atom normalised uncertainty: `fix ID all pair N gpmlip std 1` asks for it every N steps
   (see README, "Production MD in LAMMPS"). */

#ifndef LMP_PAIR_GPMLIP_H
#define LMP_PAIR_GPMLIP_H

#include "pair.h"

#include <cstdint>
#include <string>
#include <vector>

namespace LAMMPS_NS {

class PairGpmlip : public Pair {
 public:
  PairGpmlip(class LAMMPS *);
  ~PairGpmlip() override;

  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;
  void finish() override;
  void *extract(const char *, int &) override;
  void *extract_peratom(const char *, int &) override;
  double memory_usage() override;

 private:
  void allocate();
  void map_species();
  void gather_pairs();
  void scatter_results(bool want_std);

  void *model = nullptr;             // the Python PairModel (gpmlip.lammps.bridge)
  std::string model_spec;
  double cutoff = 0.0;               // Angstrom, from the model
  std::vector<std::string> elements; // pair_coeff's element per atom type (index type - 1)
  std::vector<int64_t> type_number;  // atomic number per atom type (index type)

  int std_flag = 0;       // set by fix pair on the steps that need std
  int std_always = 0;     // pair_style ... std yes
  double *std_atom = nullptr;
  int nmax_std = 0;

  // one rank's pair list, in the layout the Python model takes
  std::vector<int64_t> centre_numbers, pair_i, pair_j, neighbour_numbers;
  std::vector<int> centre_atom;    // LAMMPS local index of each centre
  std::vector<double> r_ij, energies, dE_dr, std_centre;

  double time_total = 0.0, time_bridge = 0.0, time_model = 0.0;
  long long n_calls = 0;
};

}    // namespace LAMMPS_NS

#endif
