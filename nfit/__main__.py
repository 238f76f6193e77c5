from nfit.cli import main

main()
