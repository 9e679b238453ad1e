package io.mqvirtio.cli;

import java.io.PrintStream;

/** The streams a command prints to: set by {@link Main#commandLine}'s factory; the process's own by default. */
abstract class Streams {
    PrintStream out = System.out;
    PrintStream err = System.err;
}
