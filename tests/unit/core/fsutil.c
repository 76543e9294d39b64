/*
 * fsutil.c - cdb_mkdir_p (src/core/fsutil.c): nested directories made with
 * the mode asked for, an existing directory accepted, and a regular file
 * where a directory should be refused with ENOTDIR (the chaos driver's
 * broken BACKUP_DIR), at the end of the path and in its middle.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "core/fsutil.h"

static char root[64];

static int make_root(void **state)
{
    (void)state;
    snprintf(root, sizeof root, "/tmp/coredb-fsutil.XXXXXX");
    return mkdtemp(root) ? 0 : -1;
}

static int remove_root(void **state)
{
    (void)state;
    char *cmd = cdb_xasprintf("rm -rf '%s'", root);
    int rc = system(cmd);
    free(cmd);
    return rc == 0 ? 0 : -1;
}

static void nested_directories_are_made(void **state)
{
    (void)state;
    char *path = cdb_xasprintf("%s/a/b/c", root);
    struct stat st;
    assert_int_equal(cdb_mkdir_p(path, 0700), 0);
    assert_int_equal(stat(path, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0700);
    /* again: it exists, and that is fine */
    assert_int_equal(cdb_mkdir_p(path, 0700), 0);
    free(path);
}

static void a_file_in_the_way_is_refused(void **state)
{
    (void)state;
    char *file = cdb_xasprintf("%s/backups", root);
    char *below = cdb_xasprintf("%s/backups/more", root);
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    fclose(f);
    errno = 0;
    assert_int_equal(cdb_mkdir_p(file, 0700), -1);
    assert_int_equal(errno, ENOTDIR);
    errno = 0;
    assert_int_equal(cdb_mkdir_p(below, 0700), -1);
    assert_int_equal(errno, ENOTDIR);
    free(file);
    free(below);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(nested_directories_are_made, make_root, remove_root),
        cmocka_unit_test_setup_teardown(a_file_in_the_way_is_refused, make_root, remove_root),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
