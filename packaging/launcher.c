/*
 * Launcher of the self-contained xcluster-cni plugin bundle.
 *
 * The container runtime runs /opt/cni/bin/kube-node, a symlink to
 * xcluster-cni/current/xcluster-cni-plugin (this program). It finds the bundle's directory
 * from /proc/self/exe (all symlinks resolved, so a run that started in one version's
 * directory stays there even if an upgrade swaps `current` meanwhile), starts the bundled
 * CPython in isolated mode with a fixed module path (no site, no environment, no bytecode
 * writes) and hands over to _xcluster_entry, which picks the plugin by the name it was
 * called by (argv[0]).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef BUNDLE_STDLIB
#define BUNDLE_STDLIB "lib/python3"
#endif

static int bundle_dir(const char *argv0, char *out, size_t size) {
    ssize_t n = readlink("/proc/self/exe", out, size - 1);
    if (n > 0) {
        out[n] = '\0';
    } else if (argv0 == NULL || realpath(argv0, out) == NULL) {
        return -1;
    }
    char *slash = strrchr(out, '/');
    if (slash == NULL) {
        return -1;
    }
    *slash = '\0';
    return 0;
}

static PyStatus add_path(PyConfig *config, const char *dir, const char *sub) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, sub);
    wchar_t *wide = Py_DecodeLocale(path, NULL);
    if (wide == NULL) {
        return PyStatus_NoMemory();
    }
    PyStatus status = PyWideStringList_Append(&config->module_search_paths, wide);
    PyMem_RawFree(wide);
    return status;
}

int main(int argc, char **argv) {
    char dir[PATH_MAX];
    if (bundle_dir(argc > 0 ? argv[0] : NULL, dir, sizeof dir) != 0) {
        fprintf(stderr, "xcluster-cni: cannot find the plugin bundle directory\n");
        return 127;
    }
    PyConfig config;
    PyConfig_InitIsolatedConfig(&config);
    config.site_import = 0;
    config.write_bytecode = 0;
    config.pathconfig_warnings = 0;
    config.install_signal_handlers = 1;
    config.module_search_paths_set = 1;
    PyStatus status = PyConfig_SetBytesString(&config, &config.home, dir);
    if (!PyStatus_Exception(status)) status = add_path(&config, dir, BUNDLE_STDLIB);
    if (!PyStatus_Exception(status)) status = add_path(&config, dir, BUNDLE_STDLIB "/lib-dynload");
    if (!PyStatus_Exception(status)) status = add_path(&config, dir, "site-packages");
    if (!PyStatus_Exception(status)) status = PyConfig_SetBytesArgv(&config, argc, argv);
    if (!PyStatus_Exception(status)) {
        status = PyConfig_SetString(&config, &config.run_command,
                                    L"import _xcluster_entry; _xcluster_entry.main()\n");
    }
    if (!PyStatus_Exception(status)) status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) {
        Py_ExitStatusException(status);
    }
    return Py_RunMain();
}
