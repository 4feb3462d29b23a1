// Integration tests of the inbox (idempotent consumer) and the orderings.
#include "gtest/gtest.h"
