# Inside a wheel everything lives under the arkernels/ package (arkernels/lib, arkernels/include,
# arkernels/lib/cmake/arkernels); a plain `cmake --install` uses the usual GNU layout.
if(SKBUILD)
  set(ARKERNELS_INSTALL_LIBDIR arkernels/lib)
  set(ARKERNELS_INSTALL_INCLUDEDIR arkernels/include)
else()
  include(GNUInstallDirs)
  set(ARKERNELS_INSTALL_LIBDIR ${CMAKE_INSTALL_LIBDIR})
  set(ARKERNELS_INSTALL_INCLUDEDIR ${CMAKE_INSTALL_INCLUDEDIR})
endif()
set(ARKERNELS_INSTALL_CMAKEDIR ${ARKERNELS_INSTALL_LIBDIR}/cmake/arkernels)
