from shvya_dispatch.app import main

main()
