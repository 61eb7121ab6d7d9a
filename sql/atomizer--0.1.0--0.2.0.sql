/*
 * atomizer 0.1.0 -> 0.2.0
 *
 * Applied by ALTER EXTENSION atomizer UPDATE, and appended to the 0.1.0
 * script to make the 0.2.0 install script (see the Makefile), so a fresh
 * install and an updated one are the same.
 */
\echo Use "ALTER EXTENSION atomizer UPDATE TO '0.2.0'" to load this file. \quit

/*
 * Last: the schedulers of a server running the 0.2.0 library leave a
 * database with the 0.1.0 objects alone; wake the launcher at commit so that
 * this database's scheduler starts at once.
 */
SELECT atomizer._extension_created();
