from shvya_dispatch.cli import main

main()
